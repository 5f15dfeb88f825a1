package qailipc

// Parameters: Go values → the JSON values of docs/values.md, "Parameters". The daemon hands
// every parameter to PostgreSQL as text, so PostgreSQL's input function for the parameter's
// type has the last word; a string in PostgreSQL's input syntax works for every type.

import (
	"database/sql/driver"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"
)

// appendParams appends one parameter list as a JSON array.
func appendParams(b []byte, params []any) ([]byte, error) {
	b = append(b, '[')
	for i, p := range params {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendValue(b, p); err != nil {
			return nil, fmt.Errorf("qailipc: parameter $%d: %w", i+1, err)
		}
	}
	return append(b, ']'), nil
}

// appendValue appends v as the JSON value the protocol expects for a parameter:
//
//   - nil, and nil pointers, slices and maps: null (SQL NULL)
//   - bool: true/false; integers: JSON numbers, exactly
//   - float32/float64: the shortest number that reads back the same; NaN and the
//     infinities as the strings "NaN", "Infinity", "-Infinity"
//   - string: the string (PostgreSQL's input syntax, for any type)
//   - json.Number and json.RawMessage: embedded as written (numeric without loss; json)
//   - []byte: bytea hex text "\x0a1b"
//   - time.Time: RFC 3339 text with nanoseconds ("2024-01-31T12:00:00.5Z")
//   - time.Duration: interval text ("90.000000000 seconds")
//   - Range: PostgreSQL's range literal text
//   - driver.Valuer (sql.NullInt64, ...): its Value, encoded by these rules
//   - json.Marshaler: its JSON; encoding.TextMarshaler (net.IP, netip.Addr): its text
//   - slices and arrays: JSON arrays (array parameters, or json/jsonb)
//   - maps and structs: their encoding/json form (json/jsonb parameters)
//   - named types of the kinds above (type Mood string): as their kind
func appendValue(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendString(b, v), nil
	case int:
		return strconv.AppendInt(b, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(b, v, 10), nil
	case int32:
		return strconv.AppendInt(b, int64(v), 10), nil
	case bool:
		return strconv.AppendBool(b, v), nil
	case float64:
		return appendFloat(b, v, 64), nil
	case float32:
		return appendFloat(b, float64(v), 32), nil
	case []byte:
		if v == nil {
			return append(b, "null"...), nil
		}
		return appendBytea(b, v), nil
	case json.Number:
		if !json.Valid([]byte(v)) || len(v) == 0 || v[0] == '"' {
			return nil, fmt.Errorf("json.Number %q is not a JSON number", string(v))
		}
		return append(b, v...), nil
	case json.RawMessage:
		if v == nil {
			return append(b, "null"...), nil
		}
		if !json.Valid(v) {
			return nil, fmt.Errorf("json.RawMessage is not valid JSON")
		}
		return append(b, v...), nil
	case time.Time:
		return appendString(b, v.Format(time.RFC3339Nano)), nil
	case time.Duration:
		return appendString(b, durationText(v)), nil
	case Range:
		text, err := v.literal()
		if err != nil {
			return nil, err
		}
		return appendString(b, text), nil
	case driver.Valuer:
		rv := reflect.ValueOf(v)
		if rv.Kind() == reflect.Pointer && rv.IsNil() {
			return append(b, "null"...), nil
		}
		dv, err := v.Value()
		if err != nil {
			return nil, err
		}
		if _, again := dv.(driver.Valuer); again {
			return nil, fmt.Errorf("%T.Value returned another driver.Valuer", v)
		}
		return appendValue(b, dv)
	case json.Marshaler:
		rv := reflect.ValueOf(v)
		if rv.Kind() == reflect.Pointer && rv.IsNil() {
			return append(b, "null"...), nil
		}
		data, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		return append(b, data...), nil
	case encoding.TextMarshaler:
		rv := reflect.ValueOf(v)
		if rv.Kind() == reflect.Pointer && rv.IsNil() {
			return append(b, "null"...), nil
		}
		text, err := v.MarshalText()
		if err != nil {
			return nil, err
		}
		return appendString(b, string(text)), nil
	}
	return appendReflect(b, reflect.ValueOf(v))
}

func appendReflect(b []byte, rv reflect.Value) ([]byte, error) {
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return append(b, "null"...), nil
		}
		return appendValue(b, rv.Elem().Interface())
	case reflect.Bool:
		return strconv.AppendBool(b, rv.Bool()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(b, rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.AppendUint(b, rv.Uint(), 10), nil
	case reflect.Float32:
		return appendFloat(b, rv.Float(), 32), nil
	case reflect.Float64:
		return appendFloat(b, rv.Float(), 64), nil
	case reflect.String:
		return appendString(b, rv.String()), nil
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.IsNil() {
			return append(b, "null"...), nil
		}
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			data := make([]byte, rv.Len())
			reflect.Copy(reflect.ValueOf(data), rv)
			return appendBytea(b, data), nil
		}
		b = append(b, '[')
		for i := 0; i < rv.Len(); i++ {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendValue(b, rv.Index(i).Interface()); err != nil {
				return nil, fmt.Errorf("element %d: %w", i, err)
			}
		}
		return append(b, ']'), nil
	case reflect.Map, reflect.Struct:
		if rv.Kind() == reflect.Map && rv.IsNil() {
			return append(b, "null"...), nil
		}
		data, err := json.Marshal(rv.Interface())
		if err != nil {
			return nil, err
		}
		return append(b, data...), nil
	}
	return nil, fmt.Errorf("cannot pass a %s as a parameter; pass a string in PostgreSQL's input syntax", rv.Type())
}

func appendFloat(b []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(b, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(b, `"-Infinity"`...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bits)
}

func appendBytea(b []byte, data []byte) []byte {
	b = append(b, `"\\x`...)
	b = hex.AppendEncode(b, data)
	return append(b, '"')
}

// durationText is an exact interval literal for d: seconds with nine fraction digits
// (PostgreSQL rounds to microseconds).
func durationText(d time.Duration) string {
	sign := ""
	u := uint64(d)
	if d < 0 {
		sign = "-"
		u = uint64(-(d + 1)) + 1 // no overflow for math.MinInt64
	}
	return fmt.Sprintf("%s%d.%09d seconds", sign, u/1e9, u%1e9)
}

// paramText is the PostgreSQL input text of a scalar value (a range bound): the string
// itself for strings, the JSON text for everything else.
func paramText(v any) (string, error) {
	b, err := appendValue(nil, v)
	if err != nil {
		return "", err
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return "", err
		}
		return s, nil
	}
	return string(b), nil
}
