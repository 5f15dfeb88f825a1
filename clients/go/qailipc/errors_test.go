package qailipc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

func TestErrorFromWire(t *testing.T) {
	raw := json.RawMessage(`{"code":"23505","message":"duplicate key value violates unique constraint \"users_pkey\"",
		"severity":"ERROR","detail":"Key (id)=(1) already exists.","hint":"h","position":15,"schema":"public","table":"users",
		"constraint":"users_pkey","index":2,"succeeded":3,"failed":1,"extra":9007199254740993}`)
	err := errorFromWire("pipeline", raw)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%T", err)
	}
	if e.Code != "23505" || e.SQLState() != "23505" || e.Detail != "Key (id)=(1) already exists." || e.Hint != "h" ||
		e.Position != 15 || e.Table != "users" || e.Schema != "public" || e.Constraint != "users_pkey" ||
		e.Index != 2 || e.Succeeded != 3 || e.Failed != 1 || e.Op != "pipeline" || e.Fields["extra"] != json.Number("9007199254740993") {
		t.Fatalf("%#v", e)
	}
	want := `qailipc: 23505: duplicate key value violates unique constraint "users_pkey" (statement 2; 3 succeeded, 1 failed); DETAIL: Key (id)=(1) already exists.; HINT: h`
	if e.Error() != want {
		t.Fatalf("Error() = %s", e.Error())
	}
	for _, bad := range []string{``, `null`, `"text"`} {
		if ErrorCode(errorFromWire("query", json.RawMessage(bad))) != CodeInternal {
			t.Errorf("malformed %q not reported as internal", bad)
		}
	}
}

func TestErrorClassification(t *testing.T) {
	timeout := fmt.Errorf("wrapped: %w", &Error{Code: CodeTimeout, Message: "request cancelled after 100 ms"})
	tests := []struct {
		name   string
		err    error
		target error
		is     bool
	}{
		{"timeout is DeadlineExceeded", timeout, context.DeadlineExceeded, true},
		{"timeout by code", timeout, &Error{Code: CodeTimeout}, true},
		{"other code", timeout, &Error{Code: CodeUnknownHandle}, false},
		{"frame_too_large", &Error{Code: CodeFrameTooLarge}, ErrFrameTooLarge, true},
		{"SQL error is not a deadline", &Error{Code: "57014"}, context.DeadlineExceeded, false},
	}
	for _, tt := range tests {
		if got := errors.Is(tt.err, tt.target); got != tt.is {
			t.Errorf("%s: errors.Is = %v", tt.name, got)
		}
	}
	if !IsUnknownHandle(fmt.Errorf("x: %w", &Error{Code: CodeUnknownHandle})) || IsUnknownHandle(errors.New("x")) {
		t.Error("IsUnknownHandle")
	}
	if ErrorCode(errors.New("plain")) != "" || (&Error{Code: "pool_timeout"}).SQLState() != "" {
		t.Error("daemon codes are not SQLSTATEs")
	}
	for code, want := range map[string]bool{"42P01": true, "XX000": true, "timeout": false, "4201": false, "42p01": false} {
		if isSQLState(code) != want {
			t.Errorf("isSQLState(%q) != %v", code, want)
		}
	}
}

func TestConnErrorMessages(t *testing.T) {
	tests := []struct {
		err  *ConnError
		want string
	}{
		{&ConnError{Path: "/s", Op: "dial", Err: syscall.ENOENT}, "qailipc: cannot connect to qail-daemon at /s: no daemon is listening there."},
		{&ConnError{Path: "/s", Op: "dial", Err: syscall.EACCES}, "permission denied (the socket is mode 0660"},
		{&ConnError{Path: "/s", Op: "query", Err: errors.New("EOF")}, `qailipc: lost the connection to qail-daemon at /s during "query": EOF`},
		{&ConnError{Path: "/s", Op: "exec", InTx: true, Err: errors.New("EOF")}, "which the daemon rolled back"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); !strings.Contains(got, tt.want) {
			t.Errorf("%q does not contain %q", got, tt.want)
		}
	}
	if !errors.Is(&ConnError{Err: syscall.ECONNREFUSED}, syscall.ECONNREFUSED) {
		t.Error("Unwrap")
	}
}
