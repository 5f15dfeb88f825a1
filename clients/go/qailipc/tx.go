package qailipc

import (
	"context"
	"errors"
	"sync"
)

// Tx is a transaction begun with Client.Begin. It runs on a connection of its own, pinned by
// the daemon to one PostgreSQL connection, and must end with Commit or Rollback. A Tx may be
// used by several goroutines, but the order of their statements is then theirs to arrange.
//
// A Tx never reconnects: if its connection breaks, the daemon has rolled the transaction
// back, and every call returns a *ConnError (with InTx set), then ErrTxDone.
type Tx struct {
	c  *Client
	cn *conn

	mu   sync.Mutex
	done bool
}

func (tx *Tx) raw() bool { return tx.c.opts.Raw }

// run sends r on the transaction's connection.
func (tx *Tx) run(ctx context.Context, r *request, dst answer) error {
	tx.mu.Lock()
	if tx.done {
		tx.mu.Unlock()
		return ErrTxDone
	}
	tx.mu.Unlock()
	err := tx.cn.roundTrip(ctx, tx.c.stamp(ctx, r), dst)
	if err == nil {
		return nil
	}
	var ce *ConnError
	if errors.As(err, &ce) || ctx.Err() != nil {
		// Lost, or abandoned half-way: the stream may be out of step with this Tx, so the
		// connection is closed and the daemon rolls the transaction back.
		tx.finish(false)
	}
	return err
}

// finish marks the transaction done and gives its connection back (reuse) or closes it.
func (tx *Tx) finish(reuse bool) {
	tx.mu.Lock()
	if tx.done {
		tx.mu.Unlock()
		return
	}
	tx.done = true
	tx.mu.Unlock()
	tx.c.releaseTxConn(tx.cn, reuse)
}

// end sends commit or rollback. Any answer from the daemon ends the transaction: a commit
// of a transaction an earlier error aborted answers "transaction_aborted" and was rolled
// back.
func (tx *Tx) end(ctx context.Context, op string) error {
	err := tx.run(ctx, &request{op: op}, &plainAnswer{})
	var qe *Error
	if err == nil || errors.As(err, &qe) {
		tx.finish(true)
	}
	return err
}

// Commit commits the transaction. If an earlier error aborted it, the daemon rolls it back
// and Commit returns an *Error with code "transaction_aborted".
func (tx *Tx) Commit(ctx context.Context) error { return tx.end(ctx, "commit") }

// Rollback rolls the transaction back. After Commit or Rollback it returns ErrTxDone.
func (tx *Tx) Rollback(ctx context.Context) error { return tx.end(ctx, "rollback") }

// Prepare prepares sql and returns the statement bound to this transaction.
func (tx *Tx) Prepare(ctx context.Context, sql string) (*Stmt, error) {
	return prepare(ctx, tx, sql)
}

// Stmt returns s bound to this transaction.
func (tx *Tx) Stmt(s *Stmt) *Stmt { return &Stmt{ex: tx, st: s.st} }

// Query runs one statement inside the transaction and returns its rows.
func (tx *Tx) Query(ctx context.Context, sql string, args ...any) (*Result, error) {
	return query(ctx, tx, target{sql: sql}, args)
}

// QueryRow runs one statement inside the transaction and returns its first row for Scan.
func (tx *Tx) QueryRow(ctx context.Context, sql string, args ...any) *Row {
	res, err := query(ctx, tx, target{sql: sql}, args)
	return &Row{res: res, err: err}
}

// Exec runs one statement inside the transaction and returns the rows affected.
func (tx *Tx) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	return execute(ctx, tx, target{sql: sql}, args)
}

// Pipeline runs sql once per parameter list inside the transaction; the first failure
// aborts the transaction, as PostgreSQL does.
func (tx *Tx) Pipeline(ctx context.Context, sql string, argsBatch [][]any, opts *PipelineOptions) ([]*Result, error) {
	return pipeline(ctx, tx, target{sql: sql}, argsBatch, opts)
}

// PipelineCount is Pipeline without rows; it returns how many statements ran.
func (tx *Tx) PipelineCount(ctx context.Context, sql string, argsBatch [][]any, opts *PipelineOptions) (int64, error) {
	return pipelineCount(ctx, tx, target{sql: sql}, argsBatch, opts)
}

// Batch runs different statements in order inside the transaction.
func (tx *Tx) Batch(ctx context.Context, stmts []BatchStatement, opts *BatchOptions) ([]*Result, error) {
	return batch(ctx, tx, stmts, opts)
}
