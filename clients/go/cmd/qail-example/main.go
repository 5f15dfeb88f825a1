// Command qail-example runs a few statements through qail-daemon with the Go client: a
// query, a prepared statement, a pipeline and a transaction, on a temporary table.
//
// Usage:
//
//	qail-example [-socket PATH] [-upstream NAME] [-timeout DURATION]
//
// The socket defaults to $QAIL_SOCKET, else the daemon's default path.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/qail-daemon/qail-daemon/clients/go/qailipc"
)

func main() {
	socket := flag.String("socket", "", "daemon socket (default: $QAIL_SOCKET, else "+qailipc.DefaultSocketPath()+")")
	upstream := flag.String("upstream", "main", "configured upstream to use")
	timeout := flag.Duration("timeout", 10*time.Second, "time limit of each request")
	flag.Parse()
	log.SetFlags(0)
	if err := run(*socket, *upstream, *timeout); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func run(socket, upstream string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := qailipc.Dial(ctx, qailipc.Options{Path: socket, Upstream: upstream, Timeout: timeout,
		ClientName: "qail-example"})
	if err != nil {
		return err
	}
	defer client.Close()
	fmt.Printf("connected to %s at %s (session %s)\n", client.Server(), client.Path(), client.Session())

	var version string
	var now time.Time
	if err := client.QueryRow(ctx, "SELECT version(), now()").Scan(&version, &now); err != nil {
		return err
	}
	fmt.Printf("%s\nserver time %s\n", version, now.Format(time.RFC3339))

	// Inside a transaction, so the table is gone again afterwards whatever happens.
	tx, err := client.Begin(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "CREATE TEMP TABLE qail_example (id int8 PRIMARY KEY, name text, tags text[], doc jsonb)"); err != nil {
		return err
	}
	batch := make([][]any, 1000)
	for i := range batch {
		batch[i] = []any{i + 1, fmt.Sprintf("user%d", i+1), []string{"a", "b"}, map[string]any{"n": i + 1}}
	}
	n, err := tx.PipelineCount(ctx, "INSERT INTO qail_example VALUES ($1, $2, $3, $4)", batch, nil)
	if err != nil {
		return err
	}
	fmt.Printf("pipeline inserted %d rows\n", n)
	stmt, err := tx.Prepare(ctx, "SELECT id, name, tags, doc FROM qail_example WHERE id = $1")
	if err != nil {
		return err
	}
	res, err := stmt.Query(ctx, 42)
	if err != nil {
		return err
	}
	row := res.Rows[0]
	fmt.Printf("handle %s → columns %v\nrow: id=%v name=%v tags=%v doc=%s\n",
		stmt.Handle(), res.Columns, row[0], row[1], row[2], row[3])
	return tx.Rollback(ctx)
}
