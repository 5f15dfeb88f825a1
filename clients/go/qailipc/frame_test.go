package qailipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func body(t *testing.T, frame []byte) string {
	t.Helper()
	if n := binary.BigEndian.Uint32(frame); int(n) != len(frame)-4 {
		t.Fatalf("header says %d bytes, body has %d", n, len(frame)-4)
	}
	if !json.Valid(frame[4:]) {
		t.Fatalf("invalid JSON: %s", frame[4:])
	}
	return string(frame[4:])
}

func TestEncodeFrame(t *testing.T) {
	tests := []struct {
		name string
		r    request
		want string
	}{
		{"ping", request{op: "ping"}, `{"id":7,"op":"ping"}`},
		{"query", request{op: "query", sql: "SELECT $1", params: []any{1, "a", nil}, timeoutMS: 250},
			`{"id":7,"op":"query","sql":"SELECT $1","params":[1,"a",null],"timeout_ms":250}`},
		{"handle", request{op: "execute", handle: "h1-2"}, `{"id":7,"op":"execute","handle":"h1-2"}`},
		{"pipeline", request{op: "pipeline", sql: "S", pipeline: true, paramsBatch: [][]any{{1}, nil, {}},
			fields: []kv{{"count_only", true}}},
			`{"id":7,"op":"pipeline","sql":"S","params_batch":[[1],[],[]],"count_only":true}`},
		{"empty pipeline", request{op: "pipeline", handle: "h", pipeline: true}, `{"id":7,"op":"pipeline","handle":"h","params_batch":[]}`},
		{"batch", request{op: "batch", batch: true, statements: []stmtSpec{{sql: "A", params: []any{true}}, {handle: "h"}},
			fields: []kv{{"atomic", true}}},
			`{"id":7,"op":"batch","statements":[{"sql":"A","params":[true]},{"handle":"h"}],"atomic":true}`},
		{"hello", request{op: "hello", fields: []kv{{"protocol", 1}, {"client", "c\"x"}}},
			`{"id":7,"op":"hello","protocol":1,"client":"c\"x"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frame, err := encodeFrame(7, &tt.r, DefaultMaxFrameBytes)
			if err != nil {
				t.Fatal(err)
			}
			if got := body(t, frame); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestEncodeFrameRefusesLargeFrames(t *testing.T) {
	r := &request{op: "query", sql: strings.Repeat("x", 100)}
	if _, err := encodeFrame(1, r, 100); !errors.Is(err, ErrFrameTooLarge) || !strings.Contains(err.Error(), "100-byte limit") {
		t.Fatalf("got %v", err)
	}
	if _, err := encodeFrame(1, r, 200); err != nil {
		t.Fatal(err)
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote`, `back\slash`, "nl\n\r\t", "\x00\x01\x1f", "héllo 😀", "bad \xff utf8", "<&>", "\u2028"} {
		got := appendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q: invalid JSON %s", s, got)
		}
		var want string
		data, _ := json.Marshal(s)
		json.Unmarshal(data, &want)
		if back != want {
			t.Errorf("%q: round trip %q, encoding/json gives %q", s, back, want)
		}
	}
}

func TestReadFrame(t *testing.T) {
	frame := func(s string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(s))), s...)
	}
	tests := []struct {
		name    string
		in      []byte
		max     int
		want    string
		wantErr error
	}{
		{"one frame", frame(`{"id":1}`), 100, `{"id":1}`, nil},
		{"too large", frame(strings.Repeat("x", 101)), 100, "", ErrFrameTooLarge},
		{"truncated body", frame(`{"id":1}`)[:8], 100, "", io.ErrUnexpectedEOF},
		{"truncated header", []byte{0, 0}, 100, "", io.ErrUnexpectedEOF},
		{"nothing", nil, 100, "", io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readFrame(bytes.NewReader(tt.in), tt.max)
			if !errors.Is(err, tt.wantErr) || string(got) != tt.want {
				t.Fatalf("readFrame = %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// peer answers requests on the far end of a net.Pipe with answer(request); it tests the
// connection's framing and ordering, not the daemon.
func peer(t *testing.T, nc net.Conn, answer func(map[string]any) []byte) {
	t.Helper()
	go func() {
		for {
			b, err := readFrame(nc, DefaultMaxFrameBytes)
			if err != nil {
				return
			}
			var req map[string]any
			if err := unmarshalNumbers(b, &req); err != nil {
				return
			}
			out := answer(req)
			if out == nil {
				nc.Close()
				return
			}
			if _, err := nc.Write(out); err != nil {
				return
			}
		}
	}()
}

func rawFrame(s string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(s))), s...)
}

func TestConnPipelinesAndMatchesAnswersInOrder(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	peer(t, server, func(req map[string]any) []byte {
		return rawFrame(`{"id":` + req["id"].(json.Number).String() + `,"ok":true,"command":"` + req["sql"].(string) + `"}`)
	})
	c := newConn(client, "pipe", DefaultMaxFrameBytes, 0)
	defer c.close()
	ctx := context.Background()
	done := make(chan error, 20)
	for i := range 20 {
		go func() {
			var a plainAnswer
			sql := strings.Repeat("s", i+1)
			err := c.roundTrip(ctx, &request{op: "query", sql: sql}, &a)
			if err == nil && a.Command != sql {
				err = errors.New("answer of another request: " + a.Command)
			}
			done <- err
		}()
	}
	for range 20 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestConnErrors(t *testing.T) {
	t.Run("out of order", func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		peer(t, server, func(map[string]any) []byte { return rawFrame(`{"id":999,"ok":true}`) })
		c := newConn(client, "pipe", DefaultMaxFrameBytes, 0)
		err := c.roundTrip(context.Background(), &request{op: "ping"}, &plainAnswer{})
		var ce *ConnError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "out of order") || c.broken() == nil {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("daemon error frame", func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		peer(t, server, func(req map[string]any) []byte {
			return rawFrame(`{"id":` + req["id"].(json.Number).String() +
				`,"ok":false,"error":{"code":"42P01","message":"relation \"nope\" does not exist","position":15}}`)
		})
		c := newConn(client, "pipe", DefaultMaxFrameBytes, 0)
		defer c.close()
		err := c.roundTrip(context.Background(), &request{op: "query", sql: "x"}, &queryAnswer{})
		var qe *Error
		if !errors.As(err, &qe) || qe.Code != "42P01" || qe.Position != 15 || qe.Op != "query" || c.broken() != nil {
			t.Fatalf("got %#v", err)
		}
	})
	t.Run("peer closes", func(t *testing.T) {
		client, server := net.Pipe()
		peer(t, server, func(map[string]any) []byte { return nil })
		c := newConn(client, "/some.sock", DefaultMaxFrameBytes, 0)
		err := c.roundTrip(context.Background(), &request{op: "query", sql: "x"}, &queryAnswer{})
		var ce *ConnError
		if !errors.As(err, &ce) || ce.Op != "query" || !strings.Contains(err.Error(), "/some.sock") {
			t.Fatalf("got %v", err)
		}
		// Later requests fail at once, marked as never sent.
		err = c.roundTrip(context.Background(), &request{op: "ping"}, &plainAnswer{})
		if !errors.As(err, &ce) || !errors.Is(err, errUnsent) {
			t.Fatalf("after close: %v", err)
		}
	})
	t.Run("answer too large", func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		peer(t, server, func(map[string]any) []byte {
			return rawFrame(`{"id":1,"ok":true,"pad":"` + strings.Repeat("x", 200) + `"}`)
		})
		c := newConn(client, "pipe", 100, 0)
		err := c.roundTrip(context.Background(), &request{op: "ping"}, &plainAnswer{})
		if !errors.Is(err, ErrFrameTooLarge) || c.broken() == nil {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("context cancelled while waiting", func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		release := make(chan struct{})
		peer(t, server, func(req map[string]any) []byte {
			<-release
			return rawFrame(`{"id":` + req["id"].(json.Number).String() + `,"ok":true}`)
		})
		c := newConn(client, "pipe", DefaultMaxFrameBytes, 0)
		defer c.close()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := c.roundTrip(ctx, &request{op: "ping"}, &plainAnswer{}); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
		close(release)
		// The abandoned answer is consumed; the next request gets its own.
		if err := c.roundTrip(context.Background(), &request{op: "ping"}, &plainAnswer{}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no answer within the guard", func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		stuck := make(chan struct{})
		defer close(stuck)
		peer(t, server, func(map[string]any) []byte { <-stuck; return nil })
		c := newConn(client, "pipe", DefaultMaxFrameBytes, 50*time.Millisecond)
		err := c.roundTrip(context.Background(), &request{op: "ping"}, &plainAnswer{})
		var ce *ConnError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "no answer within") {
			t.Fatalf("got %v", err)
		}
	})
}
