package qailipc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"
)

// DefaultClientName is sent in hello when Options.ClientName is empty.
const DefaultClientName = "qail-ipc-go"

// maxIdleTxConns is how many connections a Client keeps for later transactions.
const maxIdleTxConns = 2

// Options configure a Client. The zero value connects to the default socket path and selects
// no upstream.
type Options struct {
	// Path is the daemon's socket. Empty: $QAIL_SOCKET, else DefaultSocketPath().
	Path string
	// Upstream, when set, selects this configured upstream right after connecting (the
	// connect op); see also Client.Use and Client.ConnectPG.
	Upstream string
	// Token is sent in hello, for daemons configured with [ipc] token.
	Token string
	// ClientName is sent in hello and shows in the daemon's logs; default DefaultClientName.
	ClientName string
	// Timeout bounds every request: it is sent as timeout_ms and the daemon cancels the
	// statement inside PostgreSQL when it expires (the answer is an *Error with code
	// "timeout"). A context deadline that comes sooner is sent instead. 0: no limit.
	Timeout time.Duration
	// MaxFrameBytes is the frame size limit in both directions; default
	// DefaultMaxFrameBytes (16 MiB), the daemon's default [ipc] max_frame_bytes.
	MaxFrameBytes int
	// Raw returns values as the protocol sends them, with no decoding by column type:
	// strings, bool, json.Number, []any, map[string]any and nil.
	Raw bool
}

// Client is a connection to qail-daemon. It is safe for concurrent use by several
// goroutines: their requests are pipelined on one Unix-socket connection, and the daemon
// runs them concurrently. Outside a transaction, a connection that broke (the daemon
// restarted, say) is replaced by the next call, which replays hello and the upstream
// selection. Transactions (Begin) run on connections of their own.
type Client struct {
	opts Options
	path string
	max  int

	mu        sync.Mutex // guards everything below
	cur       *conn
	idle      []*conn            // spare connections for transactions
	active    map[*conn]struct{} // connections of open transactions
	selection *request           // connect or connect_pg to replay on new connections
	closed    bool
	server    string
	session   string
}

// Dial connects to the daemon (sending hello) and, when opts.Upstream is set, selects that
// upstream. ctx bounds the dial and the handshake only.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	c := &Client{
		opts:   opts,
		path:   ResolveSocketPath(opts.Path),
		max:    opts.MaxFrameBytes,
		active: map[*conn]struct{}{},
	}
	if c.max <= 0 {
		c.max = DefaultMaxFrameBytes
	}
	if c.opts.ClientName == "" {
		c.opts.ClientName = DefaultClientName
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cn, err := c.dial(ctx, true)
	if err != nil {
		return nil, err
	}
	c.cur = cn
	if opts.Upstream != "" {
		sel := &request{op: "connect", fields: []kv{{"upstream", opts.Upstream}}}
		if err := cn.roundTrip(ctx, c.stamp(ctx, sel), &plainAnswer{}); err != nil {
			cn.close()
			return nil, err
		}
		c.selection = sel
	}
	return c, nil
}

// Path returns the socket path in use.
func (c *Client) Path() string { return c.path }

// Server returns the daemon's server string from the last hello ("qail-daemon 0.1.0").
func (c *Client) Server() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server
}

// Session returns the daemon's session id for the current connection, from hello.
func (c *Client) Session() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.session
}

// dial opens a connection, sends hello and replays the upstream selection. c.mu is held.
func (c *Client) dial(ctx context.Context, main bool) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, &ConnError{Path: c.path, Op: "dial", Err: err}
	}
	guard := time.Duration(0)
	if c.opts.Timeout > 0 {
		guard = c.opts.Timeout + answerGrace
	}
	cn := newConn(nc, c.path, c.max, guard)
	hello := &request{op: "hello", fields: []kv{{"protocol", Protocol}, {"client", c.opts.ClientName}}}
	if c.opts.Token != "" {
		hello.fields = append(hello.fields, kv{"token", c.opts.Token})
	}
	var ha helloAnswer
	if err := cn.roundTrip(ctx, c.stamp(ctx, hello), &ha); err != nil {
		cn.close()
		return nil, err
	}
	if c.selection != nil {
		if err := cn.roundTrip(ctx, c.stamp(ctx, c.selection), &plainAnswer{}); err != nil {
			cn.close()
			return nil, err
		}
	}
	if main {
		c.server, c.session = ha.Server, ha.Session
	}
	return cn, nil
}

// stamp returns r with timeout_ms set from Options.Timeout and ctx's deadline.
func (c *Client) stamp(ctx context.Context, r *request) *request {
	limit := c.opts.Timeout
	if dl, ok := ctx.Deadline(); ok {
		if rem := time.Until(dl); limit <= 0 || rem < limit {
			limit = rem
		}
	}
	if limit <= 0 {
		if r.timeoutMS == 0 {
			return r
		}
		cp := *r
		cp.timeoutMS = 0
		return &cp
	}
	ms := int64(math.Ceil(float64(limit) / float64(time.Millisecond)))
	cp := *r
	cp.timeoutMS = max(ms, 1)
	return &cp
}

// conn returns the current connection, dialing a new one when it is missing or broken.
func (c *Client) conn(ctx context.Context) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.cur != nil && c.cur.broken() == nil {
		return c.cur, nil
	}
	if c.cur != nil {
		c.cur.close()
		c.cur = nil
	}
	cn, err := c.dial(ctx, true)
	if err != nil {
		return nil, err
	}
	c.cur = cn
	return cn, nil
}

// run sends one request outside a transaction. A request that could not be sent because
// the connection had just broken is sent again on a new one.
func (c *Client) run(ctx context.Context, r *request, dst answer) error {
	for attempt := 0; ; attempt++ {
		cn, err := c.conn(ctx)
		if err != nil {
			return err
		}
		err = cn.roundTrip(ctx, c.stamp(ctx, r), dst)
		var ce *ConnError
		if attempt == 0 && errors.As(err, &ce) && errors.Is(ce.Err, errUnsent) {
			continue
		}
		return err
	}
}

func (c *Client) raw() bool { return c.opts.Raw }

// Close closes the client's connections. Open transactions are rolled back by the daemon.
// Calls after Close return ErrClosed. Closing twice is harmless.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.cur != nil {
		c.cur.close()
		c.cur = nil
	}
	for _, cn := range c.idle {
		cn.close()
	}
	c.idle = nil
	for cn := range c.active {
		cn.close()
	}
	clear(c.active)
	return nil
}

// Ping makes one round trip to the daemon.
func (c *Client) Ping(ctx context.Context) error {
	return c.run(ctx, &request{op: "ping"}, &plainAnswer{})
}

// Use selects a configured upstream by name (the connect op) for this client's current and
// future connections. It fails with code "unknown_upstream" for a name the daemon does not
// know.
func (c *Client) Use(ctx context.Context, upstream string) error {
	sel := &request{op: "connect", fields: []kv{{"upstream", upstream}}}
	if err := c.run(ctx, sel, &plainAnswer{}); err != nil {
		return err
	}
	c.setSelection(sel)
	return nil
}

// PGConfig holds the PostgreSQL credentials of Client.ConnectPG.
type PGConfig struct {
	// Host is the PostgreSQL host as configured for the upstream ("localhost",
	// "127.0.0.1" and "::1" count as the same host).
	Host string
	// Port is the PostgreSQL port.
	Port int
	// User and Database name the upstream's role and database.
	User, Database string
	// Password is compared with the upstream's password, in constant time.
	Password string
	// SSLMode is the weakest TLS towards PostgreSQL the client accepts: "disable" (the
	// default when empty), "prefer" or "require". Only an upstream at least that strict is
	// selected.
	SSLMode string
}

// ConnectPG selects the configured upstream with these PostgreSQL credentials (the
// connect_pg op) and returns its name. A wrong password is an *Error with code
// "auth_failed".
func (c *Client) ConnectPG(ctx context.Context, cfg PGConfig) (string, error) {
	sel := &request{op: "connect_pg", fields: []kv{
		{"host", cfg.Host}, {"port", cfg.Port}, {"user", cfg.User},
		{"database", cfg.Database}, {"password", cfg.Password},
	}}
	if cfg.SSLMode != "" {
		sel.fields = append(sel.fields, kv{"sslmode", cfg.SSLMode})
	}
	var a plainAnswer
	if err := c.run(ctx, sel, &a); err != nil {
		return "", err
	}
	c.setSelection(sel)
	return a.Upstream, nil
}

func (c *Client) setSelection(sel *request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.selection = sel
	// Spare connections still have the old selection.
	for _, cn := range c.idle {
		cn.close()
	}
	c.idle = nil
}

// Prepare prepares sql in the daemon's statement catalogue, which all clients of the same
// upstream share, and returns the statement bound to this client.
func (c *Client) Prepare(ctx context.Context, sql string) (*Stmt, error) {
	return prepare(ctx, c, sql)
}

// Stmt returns s bound to this client. Handles are daemon-wide, so a statement prepared by
// one client runs on another without being prepared again.
func (c *Client) Stmt(s *Stmt) *Stmt { return &Stmt{ex: c, st: s.st} }

// Query runs one statement and returns all its rows. args fill $1, $2, ... in order.
func (c *Client) Query(ctx context.Context, sql string, args ...any) (*Result, error) {
	return query(ctx, c, target{sql: sql}, args)
}

// QueryRow runs one statement and returns its first row for Scan. Errors are deferred to
// Row.Scan, as in database/sql.
func (c *Client) QueryRow(ctx context.Context, sql string, args ...any) *Row {
	res, err := query(ctx, c, target{sql: sql}, args)
	return &Row{res: res, err: err}
}

// Exec runs one statement without returning rows and returns the number of rows affected.
func (c *Client) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	return execute(ctx, c, target{sql: sql}, args)
}

// Pipeline runs sql once per parameter list in argsBatch, pipelined by the daemon, and
// returns one Result per list. Without opts.Atomic each statement commits on its own and a
// failure (an *Error whose Index names the failing list) leaves the others done.
func (c *Client) Pipeline(ctx context.Context, sql string, argsBatch [][]any, opts *PipelineOptions) ([]*Result, error) {
	return pipeline(ctx, c, target{sql: sql}, argsBatch, opts)
}

// PipelineCount is Pipeline without rows coming back (count_only); it returns how many
// statements ran.
func (c *Client) PipelineCount(ctx context.Context, sql string, argsBatch [][]any, opts *PipelineOptions) (int64, error) {
	return pipelineCount(ctx, c, target{sql: sql}, argsBatch, opts)
}

// Batch runs different statements in order on one PostgreSQL connection, pipelined, and
// returns one Result each. With opts.Atomic they run in one transaction.
func (c *Client) Batch(ctx context.Context, stmts []BatchStatement, opts *BatchOptions) ([]*Result, error) {
	return batch(ctx, c, stmts, opts)
}

// Begin starts a transaction on a connection of its own, which the daemon pins to one
// PostgreSQL connection until Commit or Rollback; the Client stays usable meanwhile, for
// autocommit work. opts may set the isolation level (read committed, repeatable read,
// serializable) and ReadOnly; nil means the defaults. Cancelling the context of a call on
// the Tx while it waits for its answer ends the transaction (the daemon rolls it back).
func (c *Client) Begin(ctx context.Context, opts *sql.TxOptions) (*Tx, error) {
	r := &request{op: "begin"}
	if opts != nil {
		switch opts.Isolation {
		case sql.LevelDefault:
		case sql.LevelReadCommitted:
			r.fields = append(r.fields, kv{"isolation", "read committed"})
		case sql.LevelRepeatableRead:
			r.fields = append(r.fields, kv{"isolation", "repeatable read"})
		case sql.LevelSerializable:
			r.fields = append(r.fields, kv{"isolation", "serializable"})
		default:
			return nil, fmt.Errorf("qailipc: isolation level %s is not supported; use read committed, repeatable read or serializable", opts.Isolation)
		}
		if opts.ReadOnly {
			r.fields = append(r.fields, kv{"read_only", true})
		}
	}
	for attempt := 0; ; attempt++ {
		cn, err := c.txConn(ctx)
		if err != nil {
			return nil, err
		}
		err = cn.roundTrip(ctx, c.stamp(ctx, r), &plainAnswer{})
		var ce *ConnError
		if errors.As(err, &ce) {
			c.releaseTxConn(cn, false)
			if attempt == 0 && errors.Is(ce.Err, errUnsent) {
				continue
			}
			return nil, err
		}
		if err != nil {
			c.releaseTxConn(cn, ctx.Err() == nil)
			return nil, err
		}
		cn.inTx.Store(true)
		return &Tx{c: c, cn: cn}, nil
	}
}

// txConn takes a spare connection or dials one, and records it as active.
func (c *Client) txConn(ctx context.Context) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	for len(c.idle) > 0 {
		cn := c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		if cn.broken() == nil {
			c.active[cn] = struct{}{}
			return cn, nil
		}
		cn.close()
	}
	cn, err := c.dial(ctx, false)
	if err != nil {
		return nil, err
	}
	c.active[cn] = struct{}{}
	return cn, nil
}

// releaseTxConn gives back a transaction's connection: kept for the next transaction when
// reuse is true and it is healthy, else closed.
func (c *Client) releaseTxConn(cn *conn, reuse bool) {
	cn.inTx.Store(false)
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.active, cn)
	if reuse && !c.closed && cn.broken() == nil && len(c.idle) < maxIdleTxConns {
		c.idle = append(c.idle, cn)
		return
	}
	cn.close()
}
