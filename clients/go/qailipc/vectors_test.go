package qailipc_test

// Runs the shared protocol test vectors (docs/protocol-vectors/*.json; format at the end of
// docs/protocol.md) over a raw socket, like tests/daemon/vectors.rs and the Python
// client's test_vectors.py: every file gets a fresh database (its setup SQL run there)
// configured as the upstream "main", and one connection.

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type vectorFile struct {
	Name  string           `json:"name"`
	Setup []string         `json:"setup"`
	Steps []map[string]any `json:"steps"`
}

func vectorFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "..", "docs", "protocol-vectors", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no protocol vectors found in docs/protocol-vectors")
	}
	return files
}

func TestVectors(t *testing.T) {
	for _, path := range vectorFiles(t) {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			runVectorFile(t, path)
		})
	}
}

func runVectorFile(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v vectorFile
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	c := pg(t)
	db := c.createDatabase(t)
	for _, sql := range v.Setup {
		if _, err := c.psql(db, sql); err != nil {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, c, db, "")
	refs := map[string]any{
		"pg_host":     "127.0.0.1",
		"pg_port":     json.Number(strconv.Itoa(c.port)),
		"pg_user":     pgUser,
		"pg_database": db,
		"pg_password": pgPassword,
	}
	nc, err := net.Dial("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(60 * time.Second))
	name := filepath.Base(path)
	for n, step := range v.Steps {
		where := fmt.Sprintf("%s step %d", name, n)
		switch {
		case step["send"] != nil:
			if err := writeRawFrame(nc, substitute(step["send"], refs)); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			expectFrame(t, nc, step["expect"], refs, where)
		case step["send_raw_hex"] != nil:
			raw, err := hex.DecodeString(step["send_raw_hex"].(string))
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if _, err := nc.Write(raw); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			expectFrame(t, nc, step["expect"], refs, where)
		case step["send_many"] != nil:
			var buf bytes.Buffer
			for _, m := range step["send_many"].([]any) {
				if err := writeRawFrame(&buf, substitute(m, refs)); err != nil {
					t.Fatalf("%s: %v", where, err)
				}
			}
			if _, err := nc.Write(buf.Bytes()); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			for i, want := range step["expect_many"].([]any) {
				expectFrame(t, nc, want, refs, fmt.Sprintf("%s answer %d", where, i))
			}
		default:
			t.Fatalf("%s: unknown step %v", where, step)
		}
		if step["expect_closed"] == true {
			var b [1]byte
			k, err := nc.Read(b[:])
			if k != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
				t.Fatalf("%s: expected the daemon to close the connection, got %d bytes, %v", where, k, err)
			}
		}
	}
}

func expectFrame(t *testing.T, nc net.Conn, want any, refs map[string]any, where string) {
	t.Helper()
	got, err := readRawFrame(nc)
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", where, err)
	}
	if err := match(want, got, refs, "$"); err != nil {
		t.Fatalf("%s: %v\nanswer: %s", where, err, mustJSON(got))
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// substitute replaces every "$ref:NAME" string with the captured value.
func substitute(v any, refs map[string]any) any {
	switch v := v.(type) {
	case string:
		if name, ok := strings.CutPrefix(v, "$ref:"); ok {
			return refs[name]
		}
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = substitute(e, refs)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = substitute(e, refs)
		}
		return out
	}
	return v
}

func isInteger(n json.Number) bool { return !strings.ContainsAny(string(n), ".eE") }

// match checks actual against expected under the vector rules: objects match when they
// have at least the expected keys, arrays need the same length, scalars must be equal
// (integers exactly), and "$any", "$string", "$integer", "$number", "$capture:NAME" are
// wildcards.
func match(want, got any, refs map[string]any, where string) error {
	if s, ok := want.(string); ok && strings.HasPrefix(s, "$") {
		switch {
		case s == "$any":
			return nil
		case s == "$string":
			if _, ok := got.(string); !ok {
				return fmt.Errorf("%s: expected a string, got %v", where, got)
			}
			return nil
		case s == "$integer":
			if n, ok := got.(json.Number); !ok || !isInteger(n) {
				return fmt.Errorf("%s: expected an integer, got %v", where, got)
			}
			return nil
		case s == "$number":
			if _, ok := got.(json.Number); !ok {
				return fmt.Errorf("%s: expected a number, got %v", where, got)
			}
			return nil
		case strings.HasPrefix(s, "$capture:"):
			refs[strings.TrimPrefix(s, "$capture:")] = got
			return nil
		}
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: expected an object, got %v", where, got)
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				return fmt.Errorf("%s: missing key %q", where, k)
			}
			if err := match(wv, gv, refs, where+"."+k); err != nil {
				return err
			}
		}
		return nil
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("%s: expected %s, got %s", where, mustJSON(w), mustJSON(got))
		}
		for i := range w {
			if err := match(w[i], g[i], refs, fmt.Sprintf("%s[%d]", where, i)); err != nil {
				return err
			}
		}
		return nil
	case json.Number:
		g, ok := got.(json.Number)
		if !ok || isInteger(w) != isInteger(g) {
			return fmt.Errorf("%s: expected %s, got %v", where, w, got)
		}
		if isInteger(w) {
			a, _ := new(big.Int).SetString(string(w), 10)
			b, _ := new(big.Int).SetString(string(g), 10)
			if a == nil || b == nil || a.Cmp(b) != 0 {
				return fmt.Errorf("%s: expected %s, got %s", where, w, g)
			}
			return nil
		}
		a, _ := w.Float64()
		b, _ := g.Float64()
		if a != b {
			return fmt.Errorf("%s: expected %s, got %s", where, w, g)
		}
		return nil
	}
	if want != got {
		return fmt.Errorf("%s: expected %v, got %v", where, mustJSON(want), mustJSON(got))
	}
	return nil
}

// TestVectorMatcher checks the matcher itself on the documented rules.
func TestVectorMatcher(t *testing.T) {
	parse := func(s string) any {
		d := json.NewDecoder(strings.NewReader(s))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	got := parse(`{"id": 1, "ok": true, "handle": "h1", "rows": [[9223372036854775807, "a"]], "extra": 5}`)
	tests := []struct {
		want string
		ok   bool
	}{
		{`{"id": 1, "handle": "$capture:h", "rows": [["$integer", "$string"]]}`, true},
		{`{"rows": [[9223372036854775807, "a"]]}`, true},
		{`{"rows": [[9223372036854775806, "a"]]}`, false},
		{`{"rows": [[1]]}`, false},
		{`{"missing": 1}`, false},
		{`{"id": "$string"}`, false},
		{`{"id": 2}`, false},
		{`{"id": 1.0}`, false},
		{`{"extra": "$number", "ok": "$any"}`, true},
	}
	for _, tt := range tests {
		refs := map[string]any{}
		err := match(parse(tt.want), got, refs, "$")
		if (err == nil) != tt.ok {
			t.Errorf("match(%s) = %v, want ok=%v", tt.want, err, tt.ok)
		}
	}
	refs := map[string]any{}
	if err := match(parse(`{"handle": "$capture:h"}`), got, refs, "$"); err != nil || refs["h"] != "h1" {
		t.Fatalf("capture: %v %v", err, refs)
	}
	if s := substitute(parse(`{"handle": "$ref:h", "n": [1]}`), refs); mustJSON(s) != `{"handle":"h1","n":[1]}` {
		t.Fatalf("substitute: %s", mustJSON(s))
	}
}
