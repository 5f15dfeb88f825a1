package qailipc

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// Daemon error codes (docs/protocol.md, "Errors"). An [Error] whose code is not one of
// these carries a PostgreSQL SQLSTATE instead.
const (
	CodeBadRequest          = "bad_request"
	CodeUnknownOp           = "unknown_op"
	CodeFrameTooLarge       = "frame_too_large"
	CodeUnsupportedProtocol = "unsupported_protocol"
	CodeNotConnected        = "not_connected"
	CodeUnknownUpstream     = "unknown_upstream"
	CodeUnknownHandle       = "unknown_handle"
	CodeBadParameter        = "bad_parameter"
	CodeAuthFailed          = "auth_failed"
	CodeForbidden           = "forbidden"
	CodeTransactionState    = "transaction_state"
	CodeTransactionAborted  = "transaction_aborted"
	CodeUpstreamUnavailable = "upstream_unavailable"
	CodePoolTimeout         = "pool_timeout"
	CodeTimeout             = "timeout"
	CodeShuttingDown        = "shutting_down"
	CodeInternal            = "internal"
)

// Errors returned by the client itself.
var (
	// ErrClosed is returned by every call on a Client after Close.
	ErrClosed = errors.New("qailipc: the client is closed")
	// ErrTxDone is returned by calls on a Tx that was committed, rolled back or lost.
	ErrTxDone = errors.New("qailipc: the transaction has already been committed or rolled back")
	// ErrNoRows is returned by Row.Scan when the query returned no rows. It is
	// database/sql's ErrNoRows, so either name can be compared with errors.Is.
	ErrNoRows = sql.ErrNoRows
	// ErrFrameTooLarge is wrapped by the error for a request larger than
	// Options.MaxFrameBytes (it is refused before anything is sent) and for an answer
	// larger than that limit (the connection is then closed). An [Error] with code
	// frame_too_large also matches it with errors.Is.
	ErrFrameTooLarge = errors.New("qailipc: frame too large")
)

// Error is a failure reported by the daemon. Code is the PostgreSQL SQLSTATE when
// PostgreSQL raised the error ("23505"), else one of the daemon codes (CodePoolTimeout, ...).
// The other fields are empty (or zero) when the daemon did not send them.
//
// Use errors.As to get at it:
//
//	var qerr *qailipc.Error
//	if errors.As(err, &qerr) && qerr.Code == "23505" { ... }
type Error struct {
	// Code is a SQLSTATE or a daemon code such as "pool_timeout".
	Code string
	// Message is the human-readable message, without the code.
	Message string
	// Severity is PostgreSQL's severity ("ERROR", "FATAL"), for PostgreSQL errors.
	Severity string
	// Detail is PostgreSQL's DETAIL line.
	Detail string
	// Hint is PostgreSQL's HINT line.
	Hint string
	// Position is the 1-based character offset into the SQL text; 0 when not reported.
	Position int
	// Schema, Table, Column and Constraint name the object involved, when reported.
	Schema, Table, Column, Constraint string
	// Where is PostgreSQL's context (the call stack of a PL/pgSQL function).
	Where string
	// Index is the position of the first failing statement of a pipeline (into its list
	// of parameter lists) or of a batch (into its statements). It is valid when Failed > 0.
	Index int
	// Succeeded and Failed count the statements of a pipeline or batch that succeeded
	// and failed.
	Succeeded, Failed int
	// Op is the protocol op of the request that failed ("query", "pipeline", ...).
	Op string
	// Fields holds the complete error object as sent by the daemon, numbers as json.Number.
	Fields map[string]any
}

// Error formats the error on one line: code, message, then detail and hint when present.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("qailipc: ")
	if e.Code != "" {
		b.WriteString(e.Code)
		b.WriteString(": ")
	}
	if e.Message != "" {
		b.WriteString(e.Message)
	} else {
		b.WriteString("(no message)")
	}
	if e.Failed > 0 {
		fmt.Fprintf(&b, " (statement %d; %d succeeded, %d failed)", e.Index, e.Succeeded, e.Failed)
	}
	if e.Detail != "" {
		b.WriteString("; DETAIL: ")
		b.WriteString(e.Detail)
	}
	if e.Hint != "" {
		b.WriteString("; HINT: ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// SQLState returns Code when PostgreSQL raised the error, "" for daemon errors.
func (e *Error) SQLState() string {
	if isSQLState(e.Code) {
		return e.Code
	}
	return ""
}

// Is reports whether e matches target for errors.Is: another *Error with the same Code
// (so errors.Is(err, &qailipc.Error{Code: qailipc.CodeUnknownHandle}) works),
// context.DeadlineExceeded for a daemon timeout (the statement was cancelled because its
// timeout_ms expired), and ErrFrameTooLarge for frame_too_large.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case *Error:
		return t != nil && t.Code == e.Code
	}
	switch target {
	case context.DeadlineExceeded:
		return e.Code == CodeTimeout
	case ErrFrameTooLarge:
		return e.Code == CodeFrameTooLarge
	}
	return false
}

// ErrorCode returns the Code of the first *Error in err's chain, or "" when there is none.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// IsUnknownHandle reports whether err is the daemon's unknown_handle error: the statement
// handle is not in the daemon's catalogue (it restarted, or evicted the statement). Stmt
// heals this by itself, once per call, by preparing its SQL again.
func IsUnknownHandle(err error) bool {
	return ErrorCode(err) == CodeUnknownHandle
}

// isSQLState reports whether code looks like a SQLSTATE: five digits or upper-case letters.
func isSQLState(code string) bool {
	if len(code) != 5 {
		return false
	}
	for i := 0; i < 5; i++ {
		c := code[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// errorFromWire builds the *Error for the error object of a failed answer.
func errorFromWire(op string, raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return &Error{Code: CodeInternal, Message: "malformed answer: ok is false but there is no error object", Op: op}
	}
	var fields map[string]any
	if err := unmarshalNumbers(raw, &fields); err != nil || fields == nil {
		return &Error{Code: CodeInternal, Message: "malformed error object: " + string(raw), Op: op}
	}
	e := &Error{Op: op, Fields: fields}
	str := func(k string) string {
		s, _ := fields[k].(string)
		return s
	}
	num := func(k string) int {
		n, ok := fields[k].(json.Number)
		if !ok {
			return 0
		}
		i, _ := strconv.Atoi(n.String())
		return i
	}
	e.Code = str("code")
	e.Message = str("message")
	e.Severity = str("severity")
	e.Detail = str("detail")
	e.Hint = str("hint")
	e.Position = num("position")
	e.Schema = str("schema")
	e.Table = str("table")
	e.Column = str("column")
	e.Constraint = str("constraint")
	e.Where = str("where")
	e.Index = num("index")
	e.Succeeded = num("succeeded")
	e.Failed = num("failed")
	if _, ok := fields["index"]; ok && e.Failed == 0 {
		// An index without counts still names a failing statement.
		e.Failed = 1
	}
	return e
}

// ConnError reports that the connection to the daemon could not be made or broke. Outside
// a transaction the next call on the Client dials again; a Tx whose connection broke is
// over (the daemon rolled it back).
type ConnError struct {
	// Path is the daemon's socket path.
	Path string
	// Op is "dial" when connecting failed, else the op of the request that was in flight.
	Op string
	// InTx is set when the connection carried an open transaction.
	InTx bool
	// Err is the underlying error.
	Err error
}

// Error explains what failed and, for a failed dial, how to start the daemon.
func (e *ConnError) Error() string {
	if e.Op == "dial" {
		why := e.Err.Error()
		switch {
		case errors.Is(e.Err, syscall.ENOENT), errors.Is(e.Err, syscall.ECONNREFUSED):
			why = "no daemon is listening there"
		case errors.Is(e.Err, syscall.EACCES), errors.Is(e.Err, syscall.EPERM):
			why = "permission denied (the socket is mode 0660: run as its owner or group)"
		}
		return fmt.Sprintf("qailipc: cannot connect to qail-daemon at %s: %s. Start the daemon with "+
			"`qail-daemon --config FILE` (its [ipc] socket must be this path), or set %s or "+
			"Options.Path to point at its socket", e.Path, why, SocketEnv)
	}
	msg := fmt.Sprintf("qailipc: lost the connection to qail-daemon at %s during %q: %v", e.Path, e.Op, e.Err)
	if e.InTx {
		msg += "; the connection carried a transaction, which the daemon rolled back"
	}
	return msg
}

// Unwrap returns the underlying error.
func (e *ConnError) Unwrap() error { return e.Err }
