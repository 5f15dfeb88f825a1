package qailipc_test

// These examples need a running qail-daemon, so they are compiled but not run by go test.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/qail-daemon/qail-daemon/clients/go/qailipc"
)

func Example() {
	ctx := context.Background()
	// The socket is $QAIL_SOCKET, else the default path; "main" is an upstream of the
	// daemon's configuration.
	client, err := qailipc.Dial(ctx, qailipc.Options{Upstream: "main", Timeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	res, err := client.Query(ctx, "SELECT id, name FROM users WHERE id <= $1 ORDER BY id", 10)
	if err != nil {
		log.Fatal(err)
	}
	for i := range res.Rows {
		var id int64
		var name string
		if err := res.ScanRow(i, &id, &name); err != nil {
			log.Fatal(err)
		}
		fmt.Println(id, name)
	}
}

func ExampleClient_QueryRow() {
	ctx := context.Background()
	client, err := qailipc.Dial(ctx, qailipc.Options{Upstream: "main"})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	var total string // numeric arrives as an exact decimal string
	var updated time.Time
	err = client.QueryRow(ctx, "SELECT sum(amount), max(updated_at) FROM invoices WHERE customer = $1", 42).
		Scan(&total, &updated)
	if errors.Is(err, qailipc.ErrNoRows) {
		fmt.Println("no invoices")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(total, updated)
}

func ExampleClient_Prepare() {
	ctx := context.Background()
	client, err := qailipc.Dial(ctx, qailipc.Options{Upstream: "main"})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// The handle lives in the daemon's shared catalogue: every process using the upstream
	// can run it, and a daemon restart is healed by preparing again, automatically.
	stmt, err := client.Prepare(ctx, "SELECT name FROM users WHERE id = $1")
	if err != nil {
		log.Fatal(err)
	}
	var name string
	if err := stmt.QueryRow(ctx, 7).Scan(&name); err != nil {
		log.Fatal(err)
	}
	fmt.Println(name)
}

func ExampleClient_Pipeline() {
	ctx := context.Background()
	client, err := qailipc.Dial(ctx, qailipc.Options{Upstream: "main"})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// One frame, 1000 inserts, pipelined by the daemon on its PostgreSQL connections.
	batch := make([][]any, 1000)
	for i := range batch {
		batch[i] = []any{i, fmt.Sprintf("user%d", i)}
	}
	n, err := client.PipelineCount(ctx, "INSERT INTO users (id, name) VALUES ($1, $2)", batch,
		&qailipc.PipelineOptions{Atomic: true})
	var qerr *qailipc.Error
	if errors.As(err, &qerr) {
		log.Fatalf("statement %d failed: %v", qerr.Index, qerr)
	}
	fmt.Println(n, "inserted")
}

func ExampleClient_Begin() {
	ctx := context.Background()
	client, err := qailipc.Dial(ctx, qailipc.Options{Upstream: "main"})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	tx, err := client.Begin(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx) // no-op (ErrTxDone) after Commit
	if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", 100, 1); err != nil {
		log.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + $1 WHERE id = $2", 100, 2); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
}

func ExampleError() {
	ctx := context.Background()
	client, err := qailipc.Dial(ctx, qailipc.Options{Upstream: "main"})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	_, err = client.Exec(ctx, "INSERT INTO users (id, name) VALUES ($1, $2)", 1, "ada")
	var qerr *qailipc.Error
	switch {
	case errors.As(err, &qerr) && qerr.Code == "23505":
		fmt.Println("duplicate:", qerr.Detail, qerr.Constraint)
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Println("timed out; the daemon cancelled the statement")
	case err != nil:
		log.Fatal(err)
	}
}
