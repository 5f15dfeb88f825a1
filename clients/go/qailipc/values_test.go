package qailipc

import (
	"database/sql"
	"encoding/json"
	"math"
	"math/big"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

type mood string

func TestAppendValue(t *testing.T) {
	n := 5
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"nil", nil, `null`},
		{"bool", true, `true`},
		{"int", -7, `-7`},
		{"int64 max", int64(math.MaxInt64), `9223372036854775807`},
		{"uint64 max", uint64(math.MaxUint64), `18446744073709551615`},
		{"int8", int8(-8), `-8`},
		{"float", 1.5, `1.5`},
		{"float integral", 2.0, `2`},
		{"float large", 1e300, `1e+300`},
		{"float32 shortest", float32(1.1), `1.1`},
		{"NaN", math.NaN(), `"NaN"`},
		{"+Inf", math.Inf(1), `"Infinity"`},
		{"-Inf", float32(math.Inf(-1)), `"-Infinity"`},
		{"string", "a\"b", `"a\"b"`},
		{"named string", mood("happy"), `"happy"`},
		{"bytes", []byte{0x0a, 0x1b, 0xff}, `"\\x0a1bff"`},
		{"nil bytes", []byte(nil), `null`},
		{"byte array", [2]byte{1, 2}, `"\\x0102"`},
		{"json.Number", json.Number("12345678901234567890.5"), `12345678901234567890.5`},
		{"json.RawMessage", json.RawMessage(`{"a": [1]}`), `{"a": [1]}`},
		{"time", time.Date(2024, 1, 31, 12, 0, 0, 500, time.UTC), `"2024-01-31T12:00:00.0000005Z"`},
		{"time with zone", time.Date(2024, 1, 31, 12, 0, 0, 0, time.FixedZone("", -5*3600)), `"2024-01-31T12:00:00-05:00"`},
		{"duration", 90*time.Second + time.Nanosecond, `"90.000000001 seconds"`},
		{"negative duration", -1500 * time.Millisecond, `"-1.500000000 seconds"`},
		{"min duration", time.Duration(math.MinInt64), `"-9223372036.854775808 seconds"`},
		{"range", Range{Lower: 1, Upper: 10, LowerInc: true}, `"[\"1\",\"10\")"`},
		{"range unbounded", Range{Upper: "a\"b", UpperInc: true}, `"(,\"a\\\"b\"]"`},
		{"empty range", Range{Empty: true}, `"empty"`},
		{"pointer", &n, `5`},
		{"nil pointer", (*int)(nil), `null`},
		{"valuer", sql.NullInt64{Int64: 3, Valid: true}, `3`},
		{"null valuer", sql.NullString{}, `null`},
		{"json marshaler", big.NewInt(0).Lsh(big.NewInt(1), 70), `1180591620717411303424`},
		{"text marshaler", netip.MustParseAddr("::1"), `"::1"`},
		{"slice", []int{1, 2}, `[1,2]`},
		{"nested slice", [][]string{{"a"}, {"b", "NULL"}}, `[["a"],["b","NULL"]]`},
		{"any slice", []any{1, nil, "x", []byte{1}}, `[1,null,"x","\\x01"]`},
		{"nil slice", []int(nil), `null`},
		{"map", map[string]int{"b": 2, "a": 1}, `{"a":1,"b":2}`},
		{"struct", struct {
			A int `json:"a"`
		}{1}, `{"a":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := appendValue(nil, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
	for _, bad := range []any{make(chan int), func() {}, json.Number("x"), json.RawMessage(`{`), complex(1, 2)} {
		if _, err := appendParams(nil, []any{1, bad}); err == nil || !strings.Contains(err.Error(), "parameter $2") {
			t.Errorf("%T: got %v, want an error naming parameter $2", bad, err)
		}
	}
}

func TestDecoders(t *testing.T) {
	ts := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		typ  string
		raw  string
		want any
	}{
		{"int8", `9223372036854775807`, int64(math.MaxInt64)},
		{"int8", `-9223372036854775808`, int64(math.MinInt64)},
		{"xid8", `18446744073709551615`, uint64(math.MaxUint64)},
		{"int4", `"12"`, "12"},
		{"oid", `4294967295`, int64(4294967295)},
		{"float8", `1e300`, 1e300},
		{"float8", `"NaN"`, nil}, // checked below
		{"float8", `"-Infinity"`, math.Inf(-1)},
		{"float4", `1.1`, float32(1.1)},
		{"float4", `"Infinity"`, float32(math.Inf(1))},
		{"numeric", `"123.4500"`, "123.4500"},
		{"bool", `true`, true},
		{"text", `"a\"\\\n\u00e9"`, "a\"\\\né"},
		{"text", `"plain"`, "plain"},
		{"json", `{"b": [1, 2.50], "a": null}`, json.RawMessage(`{"b": [1, 2.50], "a": null}`)},
		{"jsonb", `"s"`, json.RawMessage(`"s"`)},
		{"bytea", `"\\x0a1bff"`, []byte{0x0a, 0x1b, 0xff}},
		{"bytea", `"\\x"`, []byte{}},
		{"uuid", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"date", `"2024-01-31"`, time.Date(2024, 1, 31, 0, 0, 0, 0, time.UTC)},
		{"date", `"12024-01-31"`, time.Date(12024, 1, 31, 0, 0, 0, 0, time.UTC)},
		{"date", `"0044-03-15 BC"`, "0044-03-15 BC"},
		{"date", `"infinity"`, "infinity"},
		{"timestamp", `"2024-01-31T12:34:56.123456"`, ts("2024-01-31T12:34:56.123456Z")},
		{"timestamp", `"2024-01-31T12:34:56"`, ts("2024-01-31T12:34:56Z")},
		{"timestamptz", `"2024-01-31T10:34:56.5Z"`, ts("2024-01-31T10:34:56.5Z")},
		{"timestamptz", `"0044-03-15T12:00:00Z BC"`, "0044-03-15T12:00:00Z BC"},
		{"timestamptz", `"-infinity"`, "-infinity"},
		{"time", `"24:00:00"`, "24:00:00"},
		{"interval", `"P1Y2M3DT4H5M6.5S"`, "P1Y2M3DT4H5M6.5S"},
		{"mood", `"happy"`, "happy"},
		{"hstore", `"\\x0102"`, `\x0102`},
		{"_int4", `[1,null,3]`, []any{int64(1), nil, int64(3)}},
		{"_int4", `[[1,2],[3,4]]`, []any{[]any{int64(1), int64(2)}, []any{int64(3), int64(4)}}},
		{"_int4", `[]`, []any{}},
		{"_text", `["a",null,"NULL"]`, []any{"a", nil, "NULL"}},
		{"_jsonb", `[{"a":1},[1,2]]`, []any{json.RawMessage(`{"a":1}`), json.RawMessage(`[1,2]`)}},
		{"_timestamptz", `["2024-01-31T10:34:56Z","infinity"]`, []any{ts("2024-01-31T10:34:56Z"), "infinity"}},
		{"_bytea", `["\\x01"]`, []any{[]byte{1}}},
		{"int4range", `{"lower":1,"upper":10,"lower_inc":true,"upper_inc":false}`, Range{Lower: int64(1), Upper: int64(10), LowerInc: true}},
		{"numrange", `{"lower":null,"upper":"5","lower_inc":false,"upper_inc":true}`, Range{Upper: "5", UpperInc: true}},
		{"tstzrange", `{"lower":"2024-01-01T00:00:00Z","upper":null,"lower_inc":true,"upper_inc":false}`,
			Range{Lower: ts("2024-01-01T00:00:00Z"), LowerInc: true}},
		{"daterange", `{"empty":true}`, Range{Empty: true}},
		{"int4multirange", `[{"lower":1,"upper":3,"lower_inc":true,"upper_inc":false}]`, []Range{{Lower: int64(1), Upper: int64(3), LowerInc: true}}},
		{"pair", `{"n":1,"label":"x"}`, map[string]any{"n": json.Number("1"), "label": "x"}},
		{"record", `[1,"a",null]`, []any{json.Number("1"), "a", nil}},
	}
	for _, tt := range tests {
		t.Run(tt.typ+" "+tt.raw, func(t *testing.T) {
			got, err := decoderFor(tt.typ)([]byte(tt.raw))
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if f, ok := got.(float64); !ok || !math.IsNaN(f) {
					t.Fatalf("got %#v, want NaN", got)
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
	if _, err := decoderFor("bytea")([]byte(`"0102"`)); err == nil {
		t.Error("bytea without \\x was accepted")
	}
}

func TestDecodeRowsAndPipelineShapes(t *testing.T) {
	cols := `[{"name":"id","type":"int8"},{"name":"at","type":"date"}]`
	answers := map[string]string{
		"column_major": `{"id":1,"ok":true,"columns":` + cols + `,"counts":[1,2],"values":[[1,2,3],["2024-01-01",null,"infinity"]],"rows_affected":[1,2],"commands":["SELECT 1","SELECT 2"]}`,
		"columnar":     `{"id":1,"ok":true,"columns":` + cols + `,"rows":[[[1,"2024-01-01"]],[[2,null],[3,"infinity"]]],"rows_affected":[1,2],"commands":["SELECT 1","SELECT 2"]}`,
		"compact":      `{"id":1,"ok":true,"columns":` + cols + `,"results":[{"rows":[[1,"2024-01-01"]],"command":"SELECT 1","rows_affected":1},{"rows":[[2,null],[3,"infinity"]],"command":"SELECT 2"}]}`,
		"full":         `{"id":1,"ok":true,"results":[{"columns":` + cols + `,"rows":[[1,"2024-01-01"]],"command":"SELECT 1"},{"columns":` + cols + `,"rows":[[2,null],[3,"infinity"]],"command":"SELECT 2","rows_affected":2}]}`,
	}
	want := [][][]any{
		{{int64(1), time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{{int64(2), nil}, {int64(3), "infinity"}},
	}
	for shape, body := range answers {
		t.Run(shape, func(t *testing.T) {
			var a pipelineAnswer
			if err := json.Unmarshal([]byte(body), &a); err != nil {
				t.Fatal(err)
			}
			res, err := a.results(false)
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != 2 || res[0].Command != "SELECT 1" || res[1].RowsAffected != 2 || res[0].RowsAffected != 1 ||
				res[1].Columns[1] != (Column{"at", "date"}) {
				t.Fatalf("results %+v %+v", res[0], res[1])
			}
			for i := range want {
				if !reflect.DeepEqual(res[i].Rows, want[i]) {
					t.Fatalf("result %d rows %#v", i, res[i].Rows)
				}
			}
		})
	}
	var bad pipelineAnswer
	json.Unmarshal([]byte(`{"columns":[],"rows":[[]],"rows_affected":[],"commands":["SELECT 0"]}`), &bad)
	if _, err := bad.results(false); err == nil {
		t.Error("malformed columnar answer accepted")
	}
	for _, body := range []string{
		`{"columns":[{"name":"a","type":"int4"}],"counts":[2],"values":[[1]],"rows_affected":[2],"commands":["SELECT 2"]}`,
		`{"columns":[{"name":"a","type":"int4"}],"counts":[1],"values":[],"rows_affected":[1],"commands":["SELECT 1"]}`,
		`{"columns":[],"counts":[-1],"values":[],"rows_affected":[0],"commands":["SELECT 0"]}`,
	} {
		var short pipelineAnswer
		json.Unmarshal([]byte(body), &short)
		if _, err := short.results(false); err == nil {
			t.Errorf("malformed column_major answer accepted: %s", body)
		}
	}
	if _, err := decodeRows(decoders([]Column{{"a", "int4"}}, false), [][]json.RawMessage{{json.RawMessage(`1`), json.RawMessage(`2`)}}); err == nil {
		t.Error("row wider than its columns accepted")
	}
}

func TestRowsFromCommand(t *testing.T) {
	for tag, want := range map[string]int64{"SELECT 3": 3, "INSERT 0 1": 1, "UPDATE 12": 12, "CREATE TABLE": 0, "": 0} {
		if got := rowsFromCommand(tag); got != want {
			t.Errorf("rowsFromCommand(%q) = %d, want %d", tag, got, want)
		}
	}
}
