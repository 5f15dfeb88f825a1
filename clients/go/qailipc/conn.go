package qailipc

// conn is one Unix-socket connection to the daemon, shared by any number of goroutines.
//
// Requests are written in the order they enter the queue (both under wmu), and the daemon
// answers in request order, so one reader goroutine hands each answer to the oldest waiter.
// Several requests may be in flight at once; the waiting goroutine decodes its own answer.
// Once broken (read or write error, unexpected answer, Close) a conn stays broken: every
// waiter and every later request gets the error, and the owner dials a new one.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// answerGrace is how long past Options.Timeout a request waits for its answer: the daemon
// cancels the statement at the timeout and answers; this only guards against a hung daemon.
const answerGrace = 5 * time.Second

type reply struct {
	body []byte
	err  error
}

type waiter struct {
	op string
	ch chan reply // buffered: the reader never blocks on an abandoned waiter
}

type conn struct {
	nc    net.Conn
	path  string
	max   int
	guard time.Duration // 0: wait as long as the context allows
	inTx  atomic.Bool   // for error messages

	nextID atomic.Uint64
	wmu    sync.Mutex // serialises writes together with their place in the queue

	mu    sync.Mutex // guards queue and err
	queue []*waiter
	err   error
}

func newConn(nc net.Conn, path string, max int, guard time.Duration) *conn {
	c := &conn{nc: nc, path: path, max: max, guard: guard}
	go c.readLoop()
	return c
}

// broken returns the error that broke the connection, or nil while it is usable.
func (c *conn) broken() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// fail breaks the connection with err (the first error wins), closes the socket and fails
// every waiter.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	waiters := c.queue
	c.queue = nil
	err = c.err
	c.mu.Unlock()
	c.nc.Close()
	for _, w := range waiters {
		w.ch <- reply{err: err}
	}
}

func (c *conn) close() { c.fail(net.ErrClosed) }

func (c *conn) readLoop() {
	br := bufio.NewReaderSize(c.nc, 64<<10)
	for {
		body, err := readFrame(br, c.max)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				err = net.ErrClosed
			} else if err == io.EOF {
				err = errors.New("the daemon closed the connection")
			}
			c.fail(err)
			return
		}
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.mu.Unlock()
			c.fail(fmt.Errorf("the daemon sent an answer nobody asked for: %.200s", body))
			return
		}
		w := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		c.mu.Unlock()
		w.ch <- reply{body: body}
	}
}

// errUnsent marks a ConnError for a request that never reached the socket (the connection
// was already broken), so it may be retried on a new connection.
var errUnsent = errors.New("unsent")

// roundTrip sends r and decodes its answer into dst. A failed answer is returned as *Error;
// a broken connection as *ConnError.
func (c *conn) roundTrip(ctx context.Context, r *request, dst answer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	id := c.nextID.Add(1)
	frame, err := encodeFrame(id, r, c.max)
	if err != nil {
		return err
	}
	w := &waiter{op: r.op, ch: make(chan reply, 1)}

	c.wmu.Lock()
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		c.wmu.Unlock()
		return &ConnError{Path: c.path, Op: r.op, InTx: c.inTx.Load(), Err: fmt.Errorf("%w: %w", errUnsent, err)}
	}
	c.queue = append(c.queue, w)
	c.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetWriteDeadline(dl)
	}
	_, werr := c.nc.Write(frame)
	if _, ok := ctx.Deadline(); ok {
		c.nc.SetWriteDeadline(time.Time{})
	}
	c.wmu.Unlock()
	if werr != nil {
		c.fail(werr)
	}

	var guard <-chan time.Time
	if c.guard > 0 {
		t := time.NewTimer(c.guard)
		defer t.Stop()
		guard = t.C
	}
	var rep reply
	select {
	case rep = <-w.ch:
	case <-ctx.Done():
		return ctx.Err()
	case <-guard:
		c.fail(fmt.Errorf("no answer within %s", c.guard))
		rep = <-w.ch
	}
	if rep.err != nil {
		return &ConnError{Path: c.path, Op: r.op, InTx: c.inTx.Load(), Err: rep.err}
	}
	if err := json.Unmarshal(rep.body, dst); err != nil {
		c.fail(fmt.Errorf("malformed answer: %w", err))
		return &ConnError{Path: c.path, Op: r.op, InTx: c.inTx.Load(), Err: fmt.Errorf("malformed answer to %q: %w", r.op, err)}
	}
	h := dst.head()
	if string(h.ID) != strconv.FormatUint(id, 10) {
		if !h.OK && (len(h.ID) == 0 || string(h.ID) == "null") {
			// The daemon could not read the request (broken framing) and closes the connection.
			c.fail(fmt.Errorf("the daemon refused a frame and closed the connection"))
			return errorFromWire(r.op, h.Error)
		}
		err := fmt.Errorf("answer out of order: expected id %d, got %s", id, h.ID)
		c.fail(err)
		return &ConnError{Path: c.path, Op: r.op, InTx: c.inTx.Load(), Err: err}
	}
	if !h.OK {
		return errorFromWire(r.op, h.Error)
	}
	return nil
}
