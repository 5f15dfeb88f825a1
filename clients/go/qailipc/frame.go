package qailipc

// Framing (docs/protocol.md, "Transport and framing"): every message is a 4-byte unsigned
// big-endian length N followed by N bytes of UTF-8 JSON holding one object. Requests are
// written by hand into one buffer (header, then body); answers are read whole and decoded
// by the goroutine that waits for them.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// DefaultMaxFrameBytes is the default frame size limit, the daemon's default
// [ipc] max_frame_bytes: 16 MiB.
const DefaultMaxFrameBytes = 16 << 20

// kv is one extra top-level field of a request, written with appendValue.
type kv struct {
	key string
	val any
}

// stmtSpec names one statement of a batch.
type stmtSpec struct {
	sql, handle string
	params      []any
}

// request is one protocol request before it is given an id.
type request struct {
	op          string
	sql         string // target by SQL text ...
	handle      string // ... or by handle
	params      []any
	paramsBatch [][]any
	pipeline    bool // write params_batch even when empty
	statements  []stmtSpec
	batch       bool // write statements even when empty
	fields      []kv
	timeoutMS   int64
}

// encodeFrame returns the request as one frame (header and body). It fails for a
// parameter that cannot be encoded and for a frame above max bytes.
func encodeFrame(id uint64, r *request, max int) ([]byte, error) {
	b := make([]byte, 4, 256)
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `,"op":`...)
	b = appendString(b, r.op)
	var err error
	if r.sql != "" || (r.handle == "" && needsTarget(r.op)) {
		b = append(b, `,"sql":`...)
		b = appendString(b, r.sql)
	} else if r.handle != "" {
		b = append(b, `,"handle":`...)
		b = appendString(b, r.handle)
	}
	if len(r.params) > 0 {
		b = append(b, `,"params":`...)
		if b, err = appendParams(b, r.params); err != nil {
			return nil, err
		}
	}
	if r.pipeline {
		b = append(b, `,"params_batch":[`...)
		for i, p := range r.paramsBatch {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendParams(b, p); err != nil {
				return nil, fmt.Errorf("parameter list %d: %w", i, err)
			}
		}
		b = append(b, ']')
	}
	if r.batch {
		b = append(b, `,"statements":[`...)
		for i, s := range r.statements {
			if i > 0 {
				b = append(b, ',')
			}
			if s.handle != "" {
				b = append(b, `{"handle":`...)
				b = appendString(b, s.handle)
			} else {
				b = append(b, `{"sql":`...)
				b = appendString(b, s.sql)
			}
			if len(s.params) > 0 {
				b = append(b, `,"params":`...)
				if b, err = appendParams(b, s.params); err != nil {
					return nil, fmt.Errorf("statement %d: %w", i, err)
				}
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	for _, f := range r.fields {
		b = append(b, ',')
		b = appendString(b, f.key)
		b = append(b, ':')
		if b, err = appendValue(b, f.val); err != nil {
			return nil, fmt.Errorf("field %s: %w", f.key, err)
		}
	}
	if r.timeoutMS > 0 {
		b = append(b, `,"timeout_ms":`...)
		b = strconv.AppendInt(b, r.timeoutMS, 10)
	}
	b = append(b, '}')
	n := len(b) - 4
	if n > max {
		return nil, fmt.Errorf("%w: the %s request is %d bytes, above the %d-byte limit "+
			"(Options.MaxFrameBytes; the daemon's [ipc] max_frame_bytes): send fewer or smaller parameters per request",
			ErrFrameTooLarge, r.op, n, max)
	}
	binary.BigEndian.PutUint32(b, uint32(n))
	return b, nil
}

// needsTarget reports whether op names a statement (so a missing target is sent as an
// empty sql, which the daemon refuses with a clear message).
func needsTarget(op string) bool {
	switch op {
	case "prepare", "query", "execute", "pipeline":
		return true
	}
	return false
}

// readFrame reads one frame and returns its body. A length above max is refused without
// reading the body: the stream cannot be resynchronised after it, so the caller must close
// the connection.
func readFrame(r io.Reader, max int) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if int64(n) > int64(max) {
		return nil, fmt.Errorf("%w: the daemon sent a frame of %d bytes, above the %d-byte limit "+
			"(Options.MaxFrameBytes)", ErrFrameTooLarge, n, max)
	}
	if n == 0 {
		return nil, fmt.Errorf("qailipc: the daemon sent an empty frame")
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return body, nil
}

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as encoding/json
// does.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// unmarshalNumbers decodes JSON keeping numbers as json.Number, so 64-bit integers stay
// exact.
func unmarshalNumbers(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("qailipc: trailing data after JSON value")
	}
	return nil
}
