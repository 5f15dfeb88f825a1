package qailipc_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qail-daemon/qail-daemon/clients/go/qailipc"
)

const usersSQL = "CREATE TABLE users (id int CONSTRAINT users_pkey PRIMARY KEY, name text NOT NULL); " +
	"INSERT INTO users SELECT i, 'user' || i FROM generate_series(1, 5) i"

// code returns the *Error code of err, failing the test when err is not an *Error.
func code(t *testing.T, err error) string {
	t.Helper()
	var qe *qailipc.Error
	if !errors.As(err, &qe) {
		t.Fatalf("expected a *qailipc.Error, got %T: %v", err, err)
	}
	return qe.Code
}

func TestDialHelloAndUpstreams(t *testing.T) {
	e := setup(t)
	c := e.client
	if !strings.HasPrefix(c.Server(), "qail-daemon") || c.Session() == "" {
		t.Fatalf("hello: server %q session %q", c.Server(), c.Session())
	}
	if c.Path() != e.d.socket {
		t.Fatalf("Path() = %q", c.Path())
	}
	if err := c.Ping(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Use(e.ctx, "mian"); code(t, err) != qailipc.CodeUnknownUpstream {
		t.Fatalf("Use(mian): %v", err)
	}
	// A client without an upstream gets not_connected until it selects one.
	fresh, err := qailipc.Dial(e.ctx, qailipc.Options{Path: e.d.socket})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if _, err := fresh.Query(e.ctx, "SELECT 1"); code(t, err) != qailipc.CodeNotConnected {
		t.Fatalf("query before connect: %v", err)
	}
	cfg := e.d.pgConfig()
	cfg.Password = "wrong"
	if _, err := fresh.ConnectPG(e.ctx, cfg); code(t, err) != qailipc.CodeAuthFailed {
		t.Fatalf("connect_pg with a wrong password: %v", err)
	}
	// "main" talks to PostgreSQL in the clear: a client asking for TLS is not given it.
	cfg = e.d.pgConfig()
	cfg.SSLMode = "require"
	if _, err := fresh.ConnectPG(e.ctx, cfg); code(t, err) != qailipc.CodeUnknownUpstream {
		t.Fatalf("connect_pg with sslmode require: %v", err)
	}
	cfg.SSLMode = "verify-full"
	if _, err := fresh.ConnectPG(e.ctx, cfg); code(t, err) != qailipc.CodeBadRequest {
		t.Fatalf("connect_pg with sslmode verify-full: %v", err)
	}
	name, err := fresh.ConnectPG(e.ctx, e.d.pgConfig())
	if err != nil || name != "main" {
		t.Fatalf("ConnectPG = %q, %v", name, err)
	}
	var n int
	if err := fresh.QueryRow(e.ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
		t.Fatalf("after connect_pg: %d, %v", n, err)
	}
	if err := fresh.Use(e.ctx, "main"); err != nil {
		t.Fatal(err)
	}
}

func TestDialNoDaemonNamesSocketAndHowToStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nothing.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := qailipc.Dial(ctx, qailipc.Options{Path: path})
	var ce *qailipc.ConnError
	if !errors.As(err, &ce) || ce.Op != "dial" {
		t.Fatalf("expected a dial *ConnError, got %T %v", err, err)
	}
	for _, want := range []string{path, "no daemon is listening there", "qail-daemon --config", "QAIL_SOCKET"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDialWithoutPathUsesQailSocket(t *testing.T) {
	e := setup(t)
	t.Setenv(qailipc.SocketEnv, e.d.socket)
	c, err := qailipc.Dial(e.ctx, qailipc.Options{Upstream: "main"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Path() != e.d.socket {
		t.Fatalf("Path() = %q, want %q", c.Path(), e.d.socket)
	}
	if err := c.Ping(e.ctx); err != nil {
		t.Fatal(err)
	}
}

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestQueryValues(t *testing.T) {
	e := setup(t, "CREATE TYPE mood AS ENUM ('sad', 'happy')")
	tests := []struct {
		sql  string
		typ  string
		want any
	}{
		{"SELECT 9223372036854775807::int8", "int8", int64(math.MaxInt64)},
		{"SELECT (-9223372036854775808)::int8", "int8", int64(math.MinInt64)},
		{"SELECT 32767::int2", "int2", int64(32767)},
		{"SELECT 4294967295::oid", "oid", int64(4294967295)},
		{"SELECT '12.34'::money", "money", int64(1234)},
		{"SELECT 1.50::numeric", "numeric", "1.50"},
		{"SELECT '1234567890123456789012345678901234567890.0123456789'::numeric", "numeric",
			"1234567890123456789012345678901234567890.0123456789"},
		{"SELECT 'NaN'::numeric", "numeric", "NaN"},
		{"SELECT 1.5::float8", "float8", 1.5},
		{"SELECT 1.1::float4", "float4", float32(1.1)},
		{"SELECT '-Infinity'::float8", "float8", math.Inf(-1)},
		{"SELECT true", "bool", true},
		{"SELECT NULL::int4", "int4", nil},
		{"SELECT NULL::jsonb", "jsonb", nil},
		{"SELECT 'héllo \"w\" \\ ''q'''::text", "text", `héllo "w" \ 'q'`},
		{"SELECT 'ab'::char(4)", "bpchar", "ab  "},
		{`SELECT '{"a": [1, 2.50]}'::json`, "json", json.RawMessage(`{"a": [1, 2.50]}`)},
		{`SELECT '{"b": 1, "a": [1, 2.50]}'::jsonb`, "jsonb", json.RawMessage(`{"a": [1, 2.50], "b": 1}`)},
		{"SELECT '\\x00ff10'::bytea", "bytea", []byte{0, 0xff, 0x10}},
		{"SELECT ''::bytea", "bytea", []byte{}},
		{"SELECT 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid", "uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"SELECT '2024-02-29'::date", "date", time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)},
		{"SELECT 'infinity'::date", "date", "infinity"},
		{"SELECT '0044-03-15 BC'::date", "date", "0044-03-15 BC"},
		{"SELECT '2024-02-29 13:45:06.123456'::timestamp", "timestamp", mustTime("2024-02-29T13:45:06.123456Z")},
		{"SELECT '2024-02-29 13:45:06+02'::timestamptz", "timestamptz", mustTime("2024-02-29T11:45:06Z")},
		{"SELECT '-infinity'::timestamptz", "timestamptz", "-infinity"},
		{"SELECT '13:45:06.789'::time", "time", "13:45:06.789"},
		{"SELECT '13:45:06+02'::timetz", "timetz", "13:45:06+02:00"},
		{"SELECT '1 year 2 months 3 days 04:05:06.5'::interval", "interval", "P1Y2M3DT4H5M6.5S"},
		{"SELECT '192.168.0.1/24'::inet", "inet", "192.168.0.1/24"},
		{"SELECT 'happy'::mood", "mood", "happy"},
		{"SELECT ARRAY[1, NULL, 3]", "_int4", []any{int64(1), nil, int64(3)}},
		{"SELECT ARRAY[[1, 2], [3, 4]]::int8[]", "_int8", []any{[]any{int64(1), int64(2)}, []any{int64(3), int64(4)}}},
		{"SELECT ARRAY['a', NULL, 'c,d', 'e\"f']", "_text", []any{"a", nil, "c,d", `e"f`}},
		{"SELECT '{}'::int8[]", "_int8", []any{}},
		{"SELECT ARRAY[1.50, 2]::numeric[]", "_numeric", []any{"1.50", "2"}},
		{"SELECT ARRAY['2024-01-01'::date]", "_date", []any{time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{`SELECT ARRAY['{"a": 1}'::jsonb, '[1, 2]'::jsonb]`, "_jsonb", []any{json.RawMessage(`{"a": 1}`), json.RawMessage(`[1, 2]`)}},
		{"SELECT int4range(1, 10)", "int4range", qailipc.Range{Lower: int64(1), Upper: int64(10), LowerInc: true}},
		{"SELECT '(,5]'::numrange", "numrange", qailipc.Range{Upper: "5", UpperInc: true}},
		{"SELECT 'empty'::int4range", "int4range", qailipc.Range{Empty: true}},
		{"SELECT '{[1,3), [5,7)}'::int4multirange", "int4multirange", []qailipc.Range{
			{Lower: int64(1), Upper: int64(3), LowerInc: true}, {Lower: int64(5), Upper: int64(7), LowerInc: true}}},
		{"SELECT ROW(1, 'a', NULL)", "record", []any{json.Number("1"), "a", nil}},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			res, err := e.client.Query(e.ctx, tt.sql)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Columns) != 1 || res.Columns[0].Type != tt.typ {
				t.Fatalf("columns = %v, want one of type %s", res.Columns, tt.typ)
			}
			if len(res.Rows) != 1 || !reflect.DeepEqual(res.Rows[0][0], tt.want) {
				t.Fatalf("value = %#v, want %#v", res.Rows[0][0], tt.want)
			}
		})
	}
	// NaN is not equal to itself, so it is checked on its own.
	var f float64
	if err := e.client.QueryRow(e.ctx, "SELECT 'NaN'::float8").Scan(&f); err != nil || !math.IsNaN(f) {
		t.Fatalf("NaN: %v %v", f, err)
	}
}

func TestParameters(t *testing.T) {
	e := setup(t)
	big := json.Number("12345678901234567890.5")
	tests := []struct {
		name string
		sql  string
		arg  any
		want any
	}{
		{"int64 max", "SELECT $1::int8", int64(math.MaxInt64), int64(math.MaxInt64)},
		{"int as string", "SELECT $1::int4", "10", int64(10)},
		{"uint8", "SELECT $1::int2", uint8(200), int64(200)},
		{"float", "SELECT $1::float8", 1.25, 1.25},
		{"float32", "SELECT $1::float4", float32(1.1), float32(1.1)},
		{"infinity", "SELECT $1::float8", math.Inf(1), math.Inf(1)},
		{"json.Number to numeric", "SELECT $1::numeric", big, "12345678901234567890.5"},
		{"bool", "SELECT $1::bool", true, true},
		{"nil", "SELECT $1::text", nil, nil},
		{"nil pointer", "SELECT $1::int4", (*int)(nil), nil},
		{"pointer", "SELECT $1::int4", func() *int { n := 5; return &n }(), int64(5)},
		{"bytes", "SELECT $1::bytea", []byte{0, 1, 0xfe}, []byte{0, 1, 0xfe}},
		{"time", "SELECT $1::timestamptz", time.Date(2024, 1, 31, 12, 0, 0, 500000000, time.FixedZone("", 3600)),
			mustTime("2024-01-31T11:00:00.5Z")},
		{"duration", "SELECT $1::interval", 90*time.Second + time.Microsecond, "PT1M30.000001S"},
		{"negative duration", "SELECT $1::interval", -36 * time.Hour, "PT-36H"},
		{"int slice", "SELECT $1::int8[]", []int64{1, 2, 3}, []any{int64(1), int64(2), int64(3)}},
		{"2-D slice", "SELECT $1::int4[]", [][]int{{1, 2}, {3, 4}}, []any{[]any{int64(1), int64(2)}, []any{int64(3), int64(4)}}},
		{"string slice with quotes and NULL", "SELECT $1::text[]", []any{`a "q"`, `b\c`, "NULL", nil},
			[]any{`a "q"`, `b\c`, "NULL", nil}},
		{"map to jsonb", "SELECT $1::jsonb", map[string]any{"a": 1, "b": []int{1, 2}}, json.RawMessage(`{"a": 1, "b": [1, 2]}`)},
		{"struct to jsonb", "SELECT $1::jsonb", struct {
			N int    `json:"n"`
			S string `json:"s"`
		}{1, "x"}, json.RawMessage(`{"n": 1, "s": "x"}`)},
		{"raw json", "SELECT $1::jsonb", json.RawMessage(`[1, {"k": "v"}]`), json.RawMessage(`[1, {"k": "v"}]`)},
		{"range", "SELECT $1::int4range", qailipc.Range{Lower: 1, Upper: 10, LowerInc: true, UpperInc: true},
			qailipc.Range{Lower: int64(1), Upper: int64(11), LowerInc: true}},
		{"tstzrange", "SELECT $1::tstzrange", qailipc.Range{Lower: mustTime("2024-01-01T00:00:00Z"), LowerInc: true},
			qailipc.Range{Lower: mustTime("2024-01-01T00:00:00Z"), LowerInc: true}},
		{"sql.NullInt64 null", "SELECT $1::int8", sql.NullInt64{}, nil},
		{"sql.NullString", "SELECT $1::text", sql.NullString{String: "s", Valid: true}, "s"},
		{"uuid string", "SELECT $1::uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := e.client.Query(e.ctx, tt.sql, tt.arg)
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Rows[0][0]; !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
	if _, err := e.client.Query(e.ctx, "SELECT $1", make(chan int)); err == nil || !strings.Contains(err.Error(), "parameter $1") {
		t.Fatalf("unsupported parameter type: %v", err)
	}
	if err := e.client.Ping(e.ctx); err != nil {
		t.Fatal(err)
	}
}

func TestScan(t *testing.T) {
	e := setup(t, usersSQL)
	var (
		id      int
		name    string
		missing *string
		at      time.Time
		data    []byte
		ids     []int64
		doc     json.RawMessage
		nullStr sql.NullString
		amount  float64
		anyv    any
	)
	err := e.client.QueryRow(e.ctx, `SELECT id, name, NULL::text, '2024-01-31 12:00+00'::timestamptz, '\xff'::bytea,
		ARRAY[1, 2]::int8[], '{"a": 1}'::jsonb, NULL::text, 2.5::numeric, 9223372036854775807::int8
		FROM users WHERE id = $1`, 3).
		Scan(&id, &name, &missing, &at, &data, &ids, &doc, &nullStr, &amount, &anyv)
	if err != nil {
		t.Fatal(err)
	}
	if id != 3 || name != "user3" || missing != nil || !at.Equal(mustTime("2024-01-31T12:00:00Z")) ||
		!reflect.DeepEqual(data, []byte{0xff}) || !reflect.DeepEqual(ids, []int64{1, 2}) ||
		string(doc) != `{"a": 1}` || nullStr.Valid || amount != 2.5 || anyv != int64(math.MaxInt64) {
		t.Fatalf("scanned %v %q %v %v %v %v %s %v %v %v", id, name, missing, at, data, ids, doc, nullStr, amount, anyv)
	}
	if err := e.client.QueryRow(e.ctx, "SELECT name FROM users WHERE id = 99").Scan(&name); !errors.Is(err, qailipc.ErrNoRows) || !errors.Is(err, sql.ErrNoRows) {
		t.Fatalf("no rows: %v", err)
	}
	if err := e.client.QueryRow(e.ctx, "SELECT NULL::int4").Scan(&id); err == nil || !strings.Contains(err.Error(), "NULL") {
		t.Fatalf("NULL into int: %v", err)
	}
	res, err := e.client.Query(e.ctx, "SELECT id, name FROM users ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range res.Rows {
		if err := res.ScanRow(i, &id, &name); err != nil {
			t.Fatal(err)
		}
		names = append(names, fmt.Sprint(id, name))
	}
	if strings.Join(names, ",") != "1user1,2user2,3user3,4user4,5user5" {
		t.Fatalf("rows: %v", names)
	}
}

func TestExecAndCommandTags(t *testing.T) {
	e := setup(t, usersSQL)
	c := e.client
	n, err := c.Exec(e.ctx, "INSERT INTO users VALUES ($1, $2)", 10, "ten")
	if err != nil || n != 1 {
		t.Fatalf("insert: %d, %v", n, err)
	}
	if n, err = c.Exec(e.ctx, "UPDATE users SET name = name || '!' WHERE id <= $1", 3); err != nil || n != 3 {
		t.Fatalf("update: %d, %v", n, err)
	}
	if n, err = c.Exec(e.ctx, "DELETE FROM users WHERE id > 3"); err != nil || n != 3 {
		t.Fatalf("delete: %d, %v", n, err)
	}
	if n, err = c.Exec(e.ctx, "CREATE TABLE t2 (x int)"); err != nil || n != 0 {
		t.Fatalf("create: %d, %v", n, err)
	}
	res, err := c.Query(e.ctx, "SELECT id FROM users ORDER BY id")
	if err != nil || res.Command != "SELECT 3" || res.RowsAffected != 3 {
		t.Fatalf("select: %+v, %v", res, err)
	}
	res, err = c.Query(e.ctx, "INSERT INTO t2 VALUES (1), (2)")
	if err != nil || res.Command != "INSERT 0 2" || res.RowsAffected != 2 || len(res.Rows) != 0 {
		t.Fatalf("insert via query: %+v, %v", res, err)
	}
	// Transaction control must go through Begin/Commit.
	if _, err := c.Exec(e.ctx, "BEGIN"); code(t, err) != qailipc.CodeBadRequest {
		t.Fatalf("BEGIN as SQL: %v", err)
	}
}

func TestPrepareAndHandleSharedAcrossClients(t *testing.T) {
	e := setup(t, usersSQL)
	a := e.client
	b := e.d.dial(t, qailipc.Options{})
	s, err := a.Prepare(e.ctx, "SELECT id, name FROM users WHERE id = $1")
	if err != nil {
		t.Fatal(err)
	}
	if s.Handle() == "" || s.SQL() != "SELECT id, name FROM users WHERE id = $1" {
		t.Fatalf("stmt %q %q", s.Handle(), s.SQL())
	}
	if !reflect.DeepEqual(s.ParamTypes(), []string{"int4"}) ||
		!reflect.DeepEqual(s.Columns(), []qailipc.Column{{Name: "id", Type: "int4"}, {Name: "name", Type: "text"}}) {
		t.Fatalf("params %v columns %v", s.ParamTypes(), s.Columns())
	}
	handle := s.Handle()
	for _, id := range []int{1, 2} {
		var name string
		if err := s.QueryRow(e.ctx, id).Scan(new(int), &name); err != nil || name != fmt.Sprint("user", id) {
			t.Fatalf("a: %q, %v", name, err)
		}
	}
	// The handle works on another client without preparing again.
	sb := b.Stmt(s)
	res, err := sb.Query(e.ctx, 4)
	if err != nil || !reflect.DeepEqual(res.Rows, [][]any{{int64(4), "user4"}}) {
		t.Fatalf("b: %v, %v", res, err)
	}
	if sb.Handle() != handle {
		t.Fatalf("handle changed from %q to %q", handle, sb.Handle())
	}
	// Preparing the same SQL again gives the same catalogue entry.
	again, err := b.Prepare(e.ctx, s.SQL())
	if err != nil || again.Handle() != handle {
		t.Fatalf("prepare again: %q, %v", again.Handle(), err)
	}
	up, err := a.Prepare(e.ctx, "UPDATE users SET name = $2 WHERE id = $1")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := b.Stmt(up).Exec(e.ctx, 5, "five"); err != nil || n != 1 {
		t.Fatalf("exec: %d, %v", n, err)
	}
}

func TestHandleHealingAfterDaemonRestart(t *testing.T) {
	e := setup(t, usersSQL)
	c := e.client
	s, err := c.Prepare(e.ctx, "SELECT name FROM users WHERE id = $1")
	if err != nil {
		t.Fatal(err)
	}
	old := s.Handle()
	e.d.restart()
	// Reconnects (replaying the upstream), gets unknown_handle, prepares again, retries.
	var name string
	if err := s.QueryRow(e.ctx, 3).Scan(&name); err != nil || name != "user3" {
		t.Fatalf("after restart: %q, %v", name, err)
	}
	if s.Handle() == old {
		t.Fatalf("handle %q was not renewed", old)
	}
	e.d.restart()
	if n, err := s.PipelineCount(e.ctx, [][]any{{1}, {2}}, nil); err != nil || n != 2 {
		t.Fatalf("pipeline after restart: %d, %v", n, err)
	}
	e.d.restart()
	res, err := c.Batch(e.ctx, []qailipc.BatchStatement{{Stmt: s, Args: []any{1}}, {SQL: "SELECT 1"}}, nil)
	if err != nil || !reflect.DeepEqual(res[0].Rows, [][]any{{"user1"}}) || !reflect.DeepEqual(res[1].Rows, [][]any{{int64(1)}}) {
		t.Fatalf("batch after restart: %v, %v", res, err)
	}
	// A handle the daemon never issued is healed the same way.
	if _, err := c.Query(e.ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

func TestReconnectAfterDaemonRestart(t *testing.T) {
	e := setup(t, usersSQL)
	c := e.client
	if _, err := c.Query(e.ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	e.d.restart()
	var n int64
	if err := c.QueryRow(e.ctx, "SELECT count(*) FROM users").Scan(&n); err != nil || n != 5 {
		t.Fatalf("after restart: %d, %v", n, err)
	}
	if c.Session() == "" {
		t.Fatal("no session after reconnecting")
	}
	// A call in flight when the daemon goes away fails clearly; the next one reconnects.
	done := make(chan error, 1)
	go func() {
		_, err := c.Query(e.ctx, "SELECT pg_sleep(30)")
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	e.d.stop()
	err := <-done
	var ce *qailipc.ConnError
	var qe *qailipc.Error
	switch {
	case errors.As(err, &ce):
		if !strings.Contains(err.Error(), "lost the connection") || ce.Op != "query" {
			t.Fatalf("unclear error: %v", err)
		}
	case errors.As(err, &qe):
		// The daemon may answer the request in flight before closing (shutting down).
	default:
		t.Fatalf("query during shutdown: %T %v", err, err)
	}
	if err := c.Ping(e.ctx); err == nil {
		t.Fatal("ping succeeded with the daemon stopped")
	}
	e.d.start()
	if err := c.Ping(e.ctx); err != nil {
		t.Fatalf("after the daemon came back: %v", err)
	}
}

func TestPipeline(t *testing.T) {
	e := setup(t, usersSQL, "CREATE TABLE t (id int PRIMARY KEY)")
	c := e.client
	res, err := c.Pipeline(e.ctx, "SELECT id, name FROM users WHERE id <= $1 ORDER BY id", [][]any{{1}, {"2"}, {0}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].Command != "SELECT 1" || res[1].RowsAffected != 2 || len(res[2].Rows) != 0 ||
		!reflect.DeepEqual(res[1].Rows, [][]any{{int64(1), "user1"}, {int64(2), "user2"}}) ||
		!reflect.DeepEqual(res[2].Columns, []qailipc.Column{{Name: "id", Type: "int4"}, {Name: "name", Type: "text"}}) {
		t.Fatalf("pipeline results: %+v %+v %+v", res[0], res[1], res[2])
	}
	batch := make([][]any, 1000)
	for i := range batch {
		batch[i] = []any{i % 5}
	}
	if n, err := c.PipelineCount(e.ctx, "SELECT name FROM users WHERE id = $1", batch, nil); err != nil || n != 1000 {
		t.Fatalf("count only: %d, %v", n, err)
	}
	// A failure names its index; without atomic the others ran.
	_, err = c.Pipeline(e.ctx, "INSERT INTO t VALUES ($1)", [][]any{{1}, {2}, {1}, {3}}, nil)
	var qe *qailipc.Error
	if !errors.As(err, &qe) || qe.Code != "23505" || qe.Index != 2 || qe.Succeeded != 3 || qe.Failed != 1 {
		t.Fatalf("pipeline failure: %#v", err)
	}
	if !strings.Contains(err.Error(), "statement 2") {
		t.Fatalf("error does not name the statement: %v", err)
	}
	// Atomic: all or nothing.
	_, err = c.PipelineCount(e.ctx, "INSERT INTO t VALUES ($1)", [][]any{{10}, {11}, {10}}, &qailipc.PipelineOptions{Atomic: true})
	if !errors.As(err, &qe) || qe.Code != "23505" || qe.Index != 2 {
		t.Fatalf("atomic failure: %v", err)
	}
	res, err = c.Pipeline(e.ctx, "INSERT INTO t VALUES ($1)", [][]any{{20}, {21}}, &qailipc.PipelineOptions{Atomic: true})
	if err != nil || len(res) != 2 || res[0].Command != "INSERT 0 1" {
		t.Fatalf("atomic success: %v, %v", res, err)
	}
	var n int64
	if err := c.QueryRow(e.ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 5 {
		t.Fatalf("rows in t: %d, %v", n, err)
	}
	if res, err := c.Pipeline(e.ctx, "SELECT $1::int", nil, nil); err != nil || len(res) != 0 {
		t.Fatalf("empty pipeline: %v, %v", res, err)
	}
}

func TestBatch(t *testing.T) {
	e := setup(t, usersSQL)
	c := e.client
	ins, err := c.Prepare(e.ctx, "INSERT INTO users VALUES ($1, $2)")
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Batch(e.ctx, []qailipc.BatchStatement{
		{Stmt: ins, Args: []any{6, "six"}},
		{SQL: "UPDATE users SET name = $1 WHERE id = 1", Args: []any{"one"}},
		{SQL: "SELECT count(*) AS n FROM users"},
	}, &qailipc.BatchOptions{Atomic: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].Command != "INSERT 0 1" || res[1].RowsAffected != 1 ||
		!reflect.DeepEqual(res[2].Rows, [][]any{{int64(6)}}) || res[2].Columns[0] != (qailipc.Column{Name: "n", Type: "int8"}) {
		t.Fatalf("batch: %+v", res)
	}
	count := func() int64 {
		var n int64
		if err := c.QueryRow(e.ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Atomic failure: nothing stays.
	_, err = c.Batch(e.ctx, []qailipc.BatchStatement{
		{Stmt: ins, Args: []any{7, "seven"}},
		{Stmt: ins, Args: []any{1, "duplicate"}},
	}, &qailipc.BatchOptions{Atomic: true})
	var qe *qailipc.Error
	if !errors.As(err, &qe) || qe.Code != "23505" || qe.Index != 1 {
		t.Fatalf("atomic batch failure: %v", err)
	}
	if n := count(); n != 6 {
		t.Fatalf("after the atomic failure: %d rows", n)
	}
	// Not atomic: the statements before the failure stay.
	_, err = c.Batch(e.ctx, []qailipc.BatchStatement{
		{Stmt: ins, Args: []any{7, "seven"}},
		{Stmt: ins, Args: []any{1, "duplicate"}},
	}, nil)
	if !errors.As(err, &qe) || qe.Code != "23505" || qe.Index != 1 {
		t.Fatalf("batch failure: %v", err)
	}
	if n := count(); n != 7 {
		t.Fatalf("after the non-atomic failure: %d rows", n)
	}
}

func TestTransactions(t *testing.T) {
	e := setup(t, usersSQL)
	c := e.client
	other := e.d.dial(t, qailipc.Options{})
	count := func(cl *qailipc.Client) int64 {
		t.Helper()
		var n int64
		if err := cl.QueryRow(e.ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	tx, err := c.Begin(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(e.ctx, "INSERT INTO users VALUES (6, 'six')"); err != nil {
		t.Fatal(err)
	}
	var n int64
	if err := tx.QueryRow(e.ctx, "SELECT count(*) FROM users").Scan(&n); err != nil || n != 6 {
		t.Fatalf("inside: %d, %v", n, err)
	}
	// The client itself and other clients do not see the uncommitted row meanwhile.
	if got := count(c); got != 5 {
		t.Fatalf("client during the transaction sees %d rows", got)
	}
	if got := count(other); got != 5 {
		t.Fatalf("other client during the transaction sees %d rows", got)
	}
	if err := tx.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(other); got != 6 {
		t.Fatalf("after commit: %d rows", got)
	}
	if err := tx.Commit(e.ctx); !errors.Is(err, qailipc.ErrTxDone) {
		t.Fatalf("second commit: %v", err)
	}

	// Rolled back: nothing stays.
	tx, err = c.Begin(e.ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	ins, err := tx.Prepare(e.ctx, "INSERT INTO users VALUES ($1, $2)")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ins.PipelineCount(e.ctx, [][]any{{7, "a"}, {8, "b"}}, nil); err != nil || n != 2 {
		t.Fatalf("pipeline in tx: %d, %v", n, err)
	}
	var level string
	if err := tx.QueryRow(e.ctx, "SHOW transaction_isolation").Scan(&level); err != nil || level != "repeatable read" {
		t.Fatalf("isolation: %q, %v", level, err)
	}
	if err := tx.Rollback(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(c); got != 6 {
		t.Fatalf("after rollback: %d rows", got)
	}
	if _, err := tx.Exec(e.ctx, "SELECT 1"); !errors.Is(err, qailipc.ErrTxDone) {
		t.Fatalf("exec after rollback: %v", err)
	}

	// Read-only transactions refuse writes.
	tx, err = c.Begin(e.ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelSerializable})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(e.ctx, "DELETE FROM users"); code(t, err) != "25006" {
		t.Fatalf("write in a read-only transaction: %v", err)
	}
	// An error aborted the transaction: commit rolls it back and says so.
	if err := tx.Commit(e.ctx); code(t, err) != qailipc.CodeTransactionAborted {
		t.Fatalf("commit of an aborted transaction: %v", err)
	}
	if got := count(c); got != 6 {
		t.Fatalf("after the aborted transaction: %d rows", got)
	}
	if _, err := c.Begin(e.ctx, &sql.TxOptions{Isolation: sql.LevelSnapshot}); err == nil {
		t.Fatal("snapshot isolation was accepted")
	}
	// Batches in a transaction.
	tx, err = c.Begin(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Batch(e.ctx, []qailipc.BatchStatement{{SQL: "DELETE FROM users WHERE id > 5"}, {SQL: "SELECT 1"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(c); got != 5 {
		t.Fatalf("after the batch transaction: %d rows", got)
	}
}

func TestDisconnectMidTransactionLeavesNothing(t *testing.T) {
	e := setup(t, usersSQL)
	a := e.d.dial(t, qailipc.Options{})
	tx, err := a.Begin(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(e.ctx, "INSERT INTO users VALUES (100, 'ghost')"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(e.ctx, "UPDATE users SET name = 'locked' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	a.Close() // disconnects mid-transaction
	if _, err := tx.Exec(e.ctx, "SELECT 1"); err == nil {
		t.Fatal("the transaction survived Close")
	}
	// The rollback releases the row lock: this update would block on it otherwise.
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	if n, err := e.client.Exec(ctx, "UPDATE users SET name = 'free' WHERE id = 1"); err != nil || n != 1 {
		t.Fatalf("update after the disconnect: %d, %v", n, err)
	}
	var n int64
	if err := e.client.QueryRow(e.ctx, "SELECT count(*) FROM users WHERE id = 100").Scan(&n); err != nil || n != 0 {
		t.Fatalf("ghost rows: %d, %v", n, err)
	}

	// The daemon going away mid-transaction: a clear error, then ErrTxDone; nothing stays.
	tx, err = e.client.Begin(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(e.ctx, "INSERT INTO users VALUES (101, 'ghost')"); err != nil {
		t.Fatal(err)
	}
	e.d.restart()
	_, err = tx.Exec(e.ctx, "INSERT INTO users VALUES (102, 'ghost')")
	var ce *qailipc.ConnError
	if !errors.As(err, &ce) || !ce.InTx || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("exec after the daemon restarted: %T %v", err, err)
	}
	if err := tx.Rollback(e.ctx); !errors.Is(err, qailipc.ErrTxDone) {
		t.Fatalf("rollback of a lost transaction: %v", err)
	}
	if err := e.client.QueryRow(e.ctx, "SELECT count(*) FROM users WHERE id >= 100").Scan(&n); err != nil || n != 0 {
		t.Fatalf("ghost rows after restart: %d, %v", n, err)
	}

	// A context that expires while a Tx waits ends the transaction (rolled back).
	tx, err = e.client.Begin(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(e.ctx, "INSERT INTO users VALUES (103, 'ghost')"); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(e.ctx, 200*time.Millisecond)
	defer cancel2()
	if _, err := tx.Exec(short, "SELECT pg_sleep(5)"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired context in a transaction: %v", err)
	}
	if err := tx.Commit(e.ctx); !errors.Is(err, qailipc.ErrTxDone) {
		t.Fatalf("commit after the context expired: %v", err)
	}
	if err := e.client.QueryRow(e.ctx, "SELECT count(*) FROM users WHERE id >= 100").Scan(&n); err != nil || n != 0 {
		t.Fatalf("ghost rows after the expired context: %d, %v", n, err)
	}
}

func TestSQLErrors(t *testing.T) {
	e := setup(t, usersSQL)
	tests := []struct {
		name     string
		sql      string
		args     []any
		code     string
		sqlstate bool
		check    func(*qailipc.Error) bool
	}{
		{"undefined table", "SELECT * FROM nope", nil, "42P01", true, func(e *qailipc.Error) bool {
			return e.Position == 15 && e.Severity == "ERROR" && e.Message == `relation "nope" does not exist`
		}},
		{"syntax", "SELEC 1", nil, "42601", true, func(e *qailipc.Error) bool { return e.Position == 1 }},
		{"unique", "INSERT INTO users VALUES ($1, $2)", []any{1, "again"}, "23505", true, func(e *qailipc.Error) bool {
			return e.Detail == "Key (id)=(1) already exists." && e.Constraint == "users_pkey" && e.Table == "users"
		}},
		{"not null", "INSERT INTO users VALUES (99, NULL)", nil, "23502", true, func(e *qailipc.Error) bool { return e.Column == "name" }},
		{"hint", "SELECT no_such_function_abc()", nil, "42883", true, func(e *qailipc.Error) bool { return e.Hint != "" }},
		{"bad input", "SELECT $1::int", []any{"ten"}, "22P02", true, nil},
		{"division by zero", "SELECT 1 / 0", nil, "22012", true, nil},
		{"parameter count", "SELECT $1::int + $2::int", []any{1}, qailipc.CodeBadParameter, false, nil},
		{"object parameter", "SELECT $1::int", []any{map[string]any{"an": "object"}}, qailipc.CodeBadParameter, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.client.Query(e.ctx, tt.sql, tt.args...)
			var qe *qailipc.Error
			if !errors.As(err, &qe) {
				t.Fatalf("expected *Error, got %T %v", err, err)
			}
			if qe.Code != tt.code || qailipc.ErrorCode(err) != tt.code || (qe.SQLState() != "") != tt.sqlstate {
				t.Fatalf("code %q sqlstate %q, want %q: %v", qe.Code, qe.SQLState(), tt.code, err)
			}
			if !strings.Contains(err.Error(), tt.code) || qe.Message == "" || qe.Op != "query" {
				t.Fatalf("error text %q", err)
			}
			if tt.check != nil && !tt.check(qe) {
				t.Fatalf("fields: %#v", qe)
			}
			if !errors.Is(err, &qailipc.Error{Code: tt.code}) {
				t.Fatal("errors.Is by code failed")
			}
			// The connection stays usable.
			if err := e.client.Ping(e.ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestTimeoutCancelsStatement(t *testing.T) {
	e := setup(t)
	c := e.d.dial(t, qailipc.Options{Timeout: 300 * time.Millisecond})
	start := time.Now()
	_, err := c.Query(e.ctx, "SELECT pg_sleep(5)")
	if code(t, err) != qailipc.CodeTimeout || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expected a timeout: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the timeout took %s", took)
	}
	if err := c.QueryRow(e.ctx, "SELECT 1").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	// A context deadline is sent as timeout_ms too: the statement is cancelled in PostgreSQL.
	ctx, cancel := context.WithTimeout(e.ctx, 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = e.client.Query(ctx, "SELECT pg_sleep(20), 'ctx-deadline-probe'")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("context deadline: %v after %s", err, time.Since(start))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n int64
		err := e.client.QueryRow(e.ctx, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%ctx-deadline-probe%' AND pid <> pg_backend_pid() AND state = 'active'").Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pg_sleep still runs in PostgreSQL after the context deadline")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestConcurrentGoroutinesShareOneClient(t *testing.T) {
	e := setup(t, "CREATE TABLE hits (g int, i int)")
	c := e.client
	const goroutines, each = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				var got string
				want := fmt.Sprintf("g%d-i%d", g, i)
				if err := c.QueryRow(e.ctx, "SELECT $1::text", want).Scan(&got); err != nil || got != want {
					errs <- fmt.Errorf("goroutine %d: got %q want %q: %v", g, got, want, err)
					return
				}
				if _, err := c.Exec(e.ctx, "INSERT INTO hits VALUES ($1, $2)", g, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var n int64
	if err := c.QueryRow(e.ctx, "SELECT count(DISTINCT (g, i)) FROM hits").Scan(&n); err != nil || n != goroutines*each {
		t.Fatalf("hits: %d, %v", n, err)
	}
}

func TestFrameLimits(t *testing.T) {
	e := setup(t)
	small := e.d.dial(t, qailipc.Options{MaxFrameBytes: 4096})
	// A request above the limit is refused before it is sent; the connection stays usable.
	_, err := small.Query(e.ctx, "SELECT length($1)", strings.Repeat("x", 5000))
	if !errors.Is(err, qailipc.ErrFrameTooLarge) || !strings.Contains(err.Error(), "4096") {
		t.Fatalf("large request: %v", err)
	}
	session := small.Session()
	if err := small.Ping(e.ctx); err != nil || small.Session() != session {
		t.Fatalf("after a refused request: %v", err)
	}
	// An answer above the limit breaks the connection with a clear error; the next call
	// reconnects.
	_, err = small.Query(e.ctx, "SELECT repeat('y', 10000)")
	if !errors.Is(err, qailipc.ErrFrameTooLarge) {
		t.Fatalf("large answer: %v", err)
	}
	if err := small.Ping(e.ctx); err != nil {
		t.Fatalf("after a large answer: %v", err)
	}
	// Large frames under the default limit work both ways.
	text := strings.Repeat("x", 3_000_000)
	var n int64
	var same bool
	if err := e.client.QueryRow(e.ctx, "SELECT length($1::text), $1::text = $2", text, text).Scan(&n, &same); err != nil || n != 3_000_000 || !same {
		t.Fatalf("3 MB parameter: %d %v %v", n, same, err)
	}
	res, err := e.client.Query(e.ctx, "SELECT i, repeat('y', 100) FROM generate_series(1, 20000) i")
	if err != nil || len(res.Rows) != 20000 || res.Rows[19999][0] != int64(20000) {
		t.Fatalf("20000 rows: %v", err)
	}
}

func TestTokenRequired(t *testing.T) {
	c := pg(t)
	db := c.createDatabase(t)
	d := startDaemon(t, c, db, `token = "s3cret"`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := qailipc.Dial(ctx, qailipc.Options{Path: d.socket, Upstream: "main"})
	if code(t, err) != qailipc.CodeAuthFailed {
		t.Fatalf("without the token: %v", err)
	}
	cl := d.dial(t, qailipc.Options{Token: "s3cret"})
	if err := cl.QueryRow(ctx, "SELECT 1").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	// Reconnecting replays the token.
	d.restart()
	if err := cl.QueryRow(ctx, "SELECT 1").Scan(new(int)); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestRawValues(t *testing.T) {
	e := setup(t)
	c := e.d.dial(t, qailipc.Options{Raw: true})
	res, err := c.Query(e.ctx, "SELECT 1.50::numeric, '\\x00ff'::bytea, '2024-01-31 12:00+00'::timestamptz, '1 day'::interval, 'NaN'::float8, 5::int8")
	if err != nil {
		t.Fatal(err)
	}
	want := []any{"1.50", `\x00ff`, "2024-01-31T12:00:00Z", "P1D", "NaN", json.Number("5")}
	if !reflect.DeepEqual(res.Rows[0], want) {
		t.Fatalf("raw row %#v", res.Rows[0])
	}
}

func TestClosedClient(t *testing.T) {
	e := setup(t)
	c := e.d.dial(t, qailipc.Options{})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Query(e.ctx, "SELECT 1"); !errors.Is(err, qailipc.ErrClosed) {
		t.Fatalf("query after close: %v", err)
	}
	if _, err := c.Begin(e.ctx, nil); !errors.Is(err, qailipc.ErrClosed) {
		t.Fatalf("begin after close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
