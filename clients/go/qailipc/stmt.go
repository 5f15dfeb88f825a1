package qailipc

import (
	"context"
	"fmt"
	"sync"
)

// executor runs requests: a Client (reconnecting outside transactions) or a Tx (on its
// pinned connection).
type executor interface {
	run(ctx context.Context, r *request, dst answer) error
	raw() bool
}

// Stmt is a prepared statement: a handle in the daemon's statement catalogue plus the SQL
// it was prepared from, bound to the Client or Tx that runs it. Handles are shared by every
// client of the same upstream (Client.Stmt and Tx.Stmt rebind a Stmt). When the daemon no
// longer knows the handle (it restarted, or evicted the statement) a call prepares the SQL
// again, once, and retries. A Stmt is safe for concurrent use.
type Stmt struct {
	ex executor
	st *stmtState
}

// stmtState is shared by every binding of one prepared statement, so healing a handle
// through one binding heals it for all.
type stmtState struct {
	sql     string
	mu      sync.Mutex
	handle  string
	params  []string
	columns []Column
}

func (st *stmtState) name() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.handle
}

func (st *stmtState) set(a *prepareAnswer) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.handle, st.params, st.columns = a.Handle, a.Params, a.Columns
}

// reprepare prepares the SQL again after unknown_handle.
func (st *stmtState) reprepare(ctx context.Context, ex executor) error {
	a, err := call[prepareAnswer](ctx, ex, &request{op: "prepare", sql: st.sql})
	if err != nil {
		return err
	}
	st.set(a)
	return nil
}

// SQL returns the statement's SQL text.
func (s *Stmt) SQL() string { return s.st.sql }

// Handle returns the daemon's current handle for the statement.
func (s *Stmt) Handle() string { return s.st.name() }

// ParamTypes returns the PostgreSQL type names of the $n parameters.
func (s *Stmt) ParamTypes() []string {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	return append([]string(nil), s.st.params...)
}

// Columns returns the result columns.
func (s *Stmt) Columns() []Column {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	return append([]Column(nil), s.st.columns...)
}

// Query runs the statement and returns all its rows.
func (s *Stmt) Query(ctx context.Context, args ...any) (*Result, error) {
	return query(ctx, s.ex, target{st: s.st}, args)
}

// QueryRow runs the statement and returns its first row for Scan.
func (s *Stmt) QueryRow(ctx context.Context, args ...any) *Row {
	res, err := query(ctx, s.ex, target{st: s.st}, args)
	return &Row{res: res, err: err}
}

// Exec runs the statement and returns the number of rows affected.
func (s *Stmt) Exec(ctx context.Context, args ...any) (int64, error) {
	return execute(ctx, s.ex, target{st: s.st}, args)
}

// Pipeline runs the statement once per parameter list; see Client.Pipeline.
func (s *Stmt) Pipeline(ctx context.Context, argsBatch [][]any, opts *PipelineOptions) ([]*Result, error) {
	return pipeline(ctx, s.ex, target{st: s.st}, argsBatch, opts)
}

// PipelineCount runs the statement once per parameter list and returns how many ran; see
// Client.PipelineCount.
func (s *Stmt) PipelineCount(ctx context.Context, argsBatch [][]any, opts *PipelineOptions) (int64, error) {
	return pipelineCount(ctx, s.ex, target{st: s.st}, argsBatch, opts)
}

// PipelineOptions modify Pipeline and PipelineCount.
type PipelineOptions struct {
	// Atomic runs every statement in one transaction on one connection: a failure rolls
	// all of them back.
	Atomic bool
}

// BatchOptions modify Batch.
type BatchOptions struct {
	// Atomic runs the statements in one transaction: a failure rolls all of them back.
	Atomic bool
}

// BatchStatement is one statement of a Batch: SQL text, or a prepared Stmt (whose handle is
// used; the Stmt's own binding does not matter), with its parameters.
type BatchStatement struct {
	// SQL is the statement text; ignored when Stmt is set.
	SQL string
	// Stmt is a prepared statement to run instead of SQL.
	Stmt *Stmt
	// Args fill $1, $2, ... in order.
	Args []any
}

// target names a statement by SQL text or by prepared statement.
type target struct {
	sql string
	st  *stmtState
}

func (t target) apply(r *request) {
	if t.st != nil {
		r.sql, r.handle = "", t.st.name()
	} else {
		r.sql, r.handle = t.sql, ""
	}
}

// call runs r and returns its decoded answer.
func call[T any, P interface {
	*T
	answer
}](ctx context.Context, ex executor, r *request) (*T, error) {
	dst := P(new(T))
	if err := ex.run(ctx, r, dst); err != nil {
		return nil, err
	}
	return (*T)(dst), nil
}

// callTarget runs r against t, healing an unknown handle once by preparing again.
func callTarget[T any, P interface {
	*T
	answer
}](ctx context.Context, ex executor, t target, r *request) (*T, error) {
	t.apply(r)
	a, err := call[T, P](ctx, ex, r)
	if t.st == nil || !IsUnknownHandle(err) {
		return a, err
	}
	if err := t.st.reprepare(ctx, ex); err != nil {
		return nil, err
	}
	t.apply(r)
	return call[T, P](ctx, ex, r)
}

func prepare(ctx context.Context, ex executor, sql string) (*Stmt, error) {
	a, err := call[prepareAnswer](ctx, ex, &request{op: "prepare", sql: sql})
	if err != nil {
		return nil, err
	}
	st := &stmtState{sql: sql}
	st.set(a)
	return &Stmt{ex: ex, st: st}, nil
}

func query(ctx context.Context, ex executor, t target, args []any) (*Result, error) {
	a, err := callTarget[queryAnswer](ctx, ex, t, &request{op: "query", params: args})
	if err != nil {
		return nil, err
	}
	return a.result(ex.raw())
}

func execute(ctx context.Context, ex executor, t target, args []any) (int64, error) {
	a, err := callTarget[queryAnswer](ctx, ex, t, &request{op: "execute", params: args})
	if err != nil {
		return 0, err
	}
	if a.RowsAffected != nil {
		return *a.RowsAffected, nil
	}
	return rowsFromCommand(a.Command), nil
}

func pipelineRequest(argsBatch [][]any, opts *PipelineOptions, countOnly bool) *request {
	r := &request{op: "pipeline", paramsBatch: argsBatch, pipeline: true}
	if countOnly {
		r.fields = append(r.fields, kv{"count_only", true})
	} else {
		// Columns once and one list of values per column: the cheapest answer to decode.
		r.fields = append(r.fields, kv{"column_major", true})
	}
	if opts != nil && opts.Atomic {
		r.fields = append(r.fields, kv{"atomic", true})
	}
	return r
}

func pipeline(ctx context.Context, ex executor, t target, argsBatch [][]any, opts *PipelineOptions) ([]*Result, error) {
	a, err := callTarget[pipelineAnswer](ctx, ex, t, pipelineRequest(argsBatch, opts, false))
	if err != nil {
		return nil, err
	}
	return a.results(ex.raw())
}

func pipelineCount(ctx context.Context, ex executor, t target, argsBatch [][]any, opts *PipelineOptions) (int64, error) {
	a, err := callTarget[pipelineAnswer](ctx, ex, t, pipelineRequest(argsBatch, opts, true))
	if err != nil {
		return 0, err
	}
	if a.Count == nil {
		return 0, fmt.Errorf("qailipc: malformed pipeline answer: count_only without count")
	}
	return *a.Count, nil
}

func batch(ctx context.Context, ex executor, stmts []BatchStatement, opts *BatchOptions) ([]*Result, error) {
	build := func() *request {
		r := &request{op: "batch", batch: true, statements: make([]stmtSpec, len(stmts))}
		for i, s := range stmts {
			spec := stmtSpec{sql: s.SQL, params: s.Args}
			if s.Stmt != nil {
				spec.sql, spec.handle = "", s.Stmt.st.name()
			}
			r.statements[i] = spec
		}
		if opts != nil && opts.Atomic {
			r.fields = append(r.fields, kv{"atomic", true})
		}
		return r
	}
	a, err := call[batchAnswer](ctx, ex, build())
	if IsUnknownHandle(err) {
		// The daemon resolves every handle before running anything, so a retry is safe.
		for _, s := range stmts {
			if s.Stmt != nil {
				if err := s.Stmt.st.reprepare(ctx, ex); err != nil {
					return nil, err
				}
			}
		}
		a, err = call[batchAnswer](ctx, ex, build())
	}
	if err != nil {
		return nil, err
	}
	out := make([]*Result, len(a.Results))
	for i := range a.Results {
		r, err := a.Results[i].result(ex.raw())
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}
