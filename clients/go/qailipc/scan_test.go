package qailipc

import (
	"database/sql"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestConvertAssign(t *testing.T) {
	at := time.Date(2024, 1, 31, 12, 0, 0, 0, time.UTC)
	five := int64(5)
	tests := []struct {
		name string
		src  any
		dest any // a pointer to a zero value of the destination type
		want any // the value the destination holds afterwards
	}{
		{"int64 to int", int64(5), new(int), 5},
		{"int64 to int16", int64(-300), new(int16), int16(-300)},
		{"int64 to uint32", int64(7), new(uint32), uint32(7)},
		{"numeric string to int64", "42", new(int64), int64(42)},
		{"numeric string to float64", "2.50", new(float64), 2.5},
		{"int64 to float64", int64(3), new(float64), 3.0},
		{"float32 to float64", float32(1.5), new(float64), 1.5},
		{"string", "s", new(string), "s"},
		{"int64 to string", int64(9), new(string), "9"},
		{"json to string", json.RawMessage(`{"a":1}`), new(string), `{"a":1}`},
		{"bytes", []byte{1, 2}, new([]byte), []byte{1, 2}},
		{"string to bytes", "ab", new([]byte), []byte("ab")},
		{"json to bytes", json.RawMessage(`[1]`), new([]byte), []byte(`[1]`)},
		{"bool", true, new(bool), true},
		{"time", at, new(time.Time), at},
		{"json raw", json.RawMessage(`{"a":1}`), new(json.RawMessage), json.RawMessage(`{"a":1}`)},
		{"array as json", []any{int64(1), "x"}, new(json.RawMessage), json.RawMessage(`[1,"x"]`)},
		{"array", []any{int64(1), int64(2)}, new([]int64), []int64{1, 2}},
		{"2-D array", []any{[]any{int64(1)}, []any{int64(2)}}, new([][]int), [][]int{{1}, {2}}},
		{"array with NULL into pointers", []any{"a", nil}, new([]*string), []*string{ptr("a"), nil}},
		{"NULL into pointer", nil, ptr(&five), (*int64)(nil)},
		{"value into pointer", int64(5), new(*int64), &five},
		{"NULL into slice", nil, &[]int{1}, []int(nil)},
		{"any", int64(5), new(any), int64(5)},
		{"NULL into any", nil, new(any), nil},
		{"range", Range{Empty: true}, new(Range), Range{Empty: true}},
		{"sql.NullInt64", int64(3), new(sql.NullInt64), sql.NullInt64{Int64: 3, Valid: true}},
		{"sql.NullInt64 NULL", nil, new(sql.NullInt64), sql.NullInt64{}},
		{"sql.NullString from json", json.RawMessage(`1`), new(sql.NullString), sql.NullString{String: "1", Valid: true}},
		{"sql.NullFloat64 from float32", float32(0.5), new(sql.NullFloat64), sql.NullFloat64{Float64: 0.5, Valid: true}},
		{"sql.NullTime", at, new(sql.NullTime), sql.NullTime{Time: at, Valid: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := convertAssign(tt.dest, tt.src); err != nil {
				t.Fatal(err)
			}
			got := reflect.ValueOf(tt.dest).Elem().Interface()
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
	failures := []struct {
		name string
		src  any
		dest any
		msg  string
	}{
		{"NULL into int", nil, new(int64), "NULL"},
		{"overflow", int64(300), new(int8), "overflows"},
		{"negative into unsigned", int64(-1), new(uint), "negative"},
		{"uint64 into int64", uint64(math.MaxUint64), new(int64), "overflows"},
		{"string into bool", "t", new(bool), "cannot store"},
		{"not a pointer", int64(1), int64(0), "not a non-nil pointer"},
		{"nil destination", int64(1), nil, "nil"},
		{"bad numeric", "1.5", new(int), "invalid syntax"},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			err := convertAssign(tt.dest, tt.src)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("got %v, want an error containing %q", err, tt.msg)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestRowScan(t *testing.T) {
	res := &Result{Columns: []Column{{"id", "int4"}, {"name", "text"}}, Rows: [][]any{{int64(1), "a"}, {int64(2), nil}}}
	var id int
	var name string
	if err := (&Row{res: res}).Scan(&id, &name); err != nil || id != 1 || name != "a" {
		t.Fatalf("Scan: %v %q %v", id, name, err)
	}
	err := res.ScanRow(1, &id, &name)
	if err == nil || !strings.Contains(err.Error(), `"name" text`) {
		t.Fatalf("NULL into string: %v", err)
	}
	if err := res.ScanRow(0, &id); err == nil || !strings.Contains(err.Error(), "expected 2 destination") {
		t.Fatalf("wrong count: %v", err)
	}
	if err := res.ScanRow(5, &id, &name); err == nil {
		t.Fatal("row out of range accepted")
	}
	if err := (&Row{res: &Result{}}).Scan(&id); !errors.Is(err, ErrNoRows) {
		t.Fatalf("no rows: %v", err)
	}
	boom := errors.New("boom")
	if r := (&Row{err: boom}); r.Scan(&id) != boom || r.Err() != boom {
		t.Fatal("the query error is not returned")
	}
}
