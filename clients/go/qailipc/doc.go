// Package qailipc is the Go client of qail-daemon: PostgreSQL through a Unix socket, with
// the standard library only.
//
// qail-daemon owns the PostgreSQL connections of a host and serves local processes over a
// Unix socket with a length-prefixed JSON protocol (protocol 1, docs/protocol.md). Its
// statement catalogue is shared by every client, so a statement prepared once is reused by
// every process; pipelines send thousands of statements in one frame.
//
// # Connecting
//
// Dial connects to the socket named by Options.Path, else $QAIL_SOCKET, else
// DefaultSocketPath(), sends hello and selects Options.Upstream:
//
//	client, err := qailipc.Dial(ctx, qailipc.Options{Upstream: "main", Timeout: 5 * time.Second})
//	if err != nil {
//		return err
//	}
//	defer client.Close()
//	res, err := client.Query(ctx, "SELECT id, name FROM users WHERE id = $1", 42)
//
// A Client is safe for concurrent use: requests of several goroutines are pipelined on one
// connection and answered in order. Outside a transaction, a broken connection (the daemon
// restarted) returns a *ConnError to the calls in flight, and the next call dials again.
// Transactions (Client.Begin) run on a connection of their own.
//
// # Values
//
// Result values are decoded by the column's PostgreSQL type (docs/values.md):
//
//	SQL NULL                                  nil
//	bool                                      bool
//	int2, int4, int8, oid, xid, cid, money    int64, exact (xid8 above 2^63: uint64)
//	float4 / float8                           float32 / float64 (NaN and ±Inf included)
//	numeric                                   string: the exact decimal, "123.4500"
//	json, jsonb                               json.RawMessage
//	bytea                                     []byte
//	date                                      time.Time (midnight UTC)
//	timestamp, timestamptz                    time.Time in UTC
//	  (infinite and BC dates and timestamps stay strings: "infinity", "0044-03-15 BC")
//	arrays (_int4, _text, ...)                []any, nested per dimension, elements by these rules
//	ranges / multiranges                      Range / []Range
//	uuid, text types, time, timetz, interval,
//	  inet, enums, other string forms         string, as docs/values.md writes them
//	composites, records                       map[string]any / []any, numbers as json.Number
//
// Options.Raw turns decoding off. Result.ScanRow and Row.Scan convert into typed
// destinations, including sql.Scanner types such as sql.NullString.
//
// Parameters are Go values: nil, bool, integers, floats, strings, []byte (bytea),
// time.Time, time.Duration (interval), json.RawMessage and json.Number, Range, slices (array
// parameters), maps and structs (json/jsonb), driver.Valuer. A string in PostgreSQL's input
// syntax works for every type ("10" for an int4, "(1,abc)" for a composite).
//
// # Errors
//
// A failure reported by the daemon is an *Error: Code is the SQLSTATE when PostgreSQL
// raised it ("23505"), else a daemon code (CodeTimeout, CodeUnknownHandle, ...), with
// Detail, Hint, Position, Constraint and, for pipelines and batches, Index. A broken or
// refused connection is a *ConnError. Use errors.As, or ErrorCode(err).
package qailipc
