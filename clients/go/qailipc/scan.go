package qailipc

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"
)

// Row is the result of QueryRow: the first row of a query, or the error that stopped it.
type Row struct {
	res *Result
	err error
}

// Err returns the error of the query, if any, without scanning.
func (r *Row) Err() error { return r.err }

// Scan copies the columns of the first row into dest (see Result.ScanRow for the
// conversions). It returns ErrNoRows when the query returned no rows.
func (r *Row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	if len(r.res.Rows) == 0 {
		return ErrNoRows
	}
	return r.res.ScanRow(0, dest...)
}

// ScanRow copies the values of row i into dest, one destination per column. Destinations
// are pointers:
//
//   - *any receives the decoded value as is (see the package documentation);
//   - *int, *int8 ... *int64, *uint ... *uint64 take integers (range-checked) and integer
//     strings (numeric); *float32, *float64 take floats, integers and numeric strings;
//   - *string takes strings, numbers and JSON; *[]byte takes bytea, strings and JSON;
//   - *bool, *time.Time, *json.RawMessage, *Range, *[]Range take their own kind;
//   - a pointer to a slice (*[]int64, *[]string, *[][]int, ...) takes an array,
//     element by element;
//   - a pointer to a pointer (**int64, ...) is set to nil for NULL, else to a new value;
//   - a sql.Scanner (sql.NullInt64, sql.NullString, sql.NullTime, ...) gets the value as
//     a driver.Value: int64, float64, bool, []byte, string, time.Time or nil.
//
// NULL into any other destination is an error naming the column.
func (r *Result) ScanRow(i int, dest ...any) error {
	if i < 0 || i >= len(r.Rows) {
		return fmt.Errorf("qailipc: row %d out of range (the result has %d rows)", i, len(r.Rows))
	}
	row := r.Rows[i]
	if len(dest) != len(row) {
		return fmt.Errorf("qailipc: expected %d destination arguments in Scan, not %d", len(row), len(dest))
	}
	for k, d := range dest {
		if err := convertAssign(d, row[k]); err != nil {
			name := strconv.Itoa(k)
			if k < len(r.Columns) {
				name = fmt.Sprintf("%d (%q %s)", k, r.Columns[k].Name, r.Columns[k].Type)
			}
			return fmt.Errorf("qailipc: Scan column %s: %w", name, err)
		}
	}
	return nil
}

// driverValue converts a decoded value to one of the driver.Value types for sql.Scanner.
func driverValue(src any) any {
	switch v := src.(type) {
	case float32:
		return float64(v)
	case uint64:
		if v <= math.MaxInt64 {
			return int64(v)
		}
		return strconv.FormatUint(v, 10)
	case json.RawMessage:
		return []byte(v)
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		return v.String()
	case nil, int64, float64, bool, []byte, string, time.Time:
		return v
	}
	return src
}

// convertAssign stores src (a decoded value) into the pointer dest.
func convertAssign(dest, src any) error {
	if sc, ok := dest.(sql.Scanner); ok {
		return sc.Scan(driverValue(src))
	}
	switch d := dest.(type) {
	case nil:
		return fmt.Errorf("destination is nil")
	case *any:
		*d = src
		return nil
	}
	dv := reflect.ValueOf(dest)
	if dv.Kind() != reflect.Pointer || dv.IsNil() {
		return fmt.Errorf("destination is a %T, not a non-nil pointer", dest)
	}
	return assignValue(dv.Elem(), src)
}

func assignValue(dv reflect.Value, src any) error {
	dt := dv.Type()
	if src == nil {
		switch dt.Kind() {
		case reflect.Pointer, reflect.Interface, reflect.Slice, reflect.Map:
			dv.SetZero()
			return nil
		}
		return fmt.Errorf("cannot store NULL in a %s; scan into a pointer (*%s), *any or a sql.Null type", dt, dt)
	}
	if dv.CanAddr() {
		if sc, ok := dv.Addr().Interface().(sql.Scanner); ok {
			return sc.Scan(driverValue(src))
		}
	}
	if dt.Kind() == reflect.Pointer {
		nv := reflect.New(dt.Elem())
		if err := assignValue(nv.Elem(), src); err != nil {
			return err
		}
		dv.Set(nv)
		return nil
	}
	sv := reflect.ValueOf(src)
	if sv.Type().AssignableTo(dt) {
		if b, ok := src.([]byte); ok {
			src = append([]byte(nil), b...)
			sv = reflect.ValueOf(src)
		}
		dv.Set(sv)
		return nil
	}
	if dt == reflect.TypeFor[json.RawMessage]() {
		data, err := json.Marshal(src)
		if err != nil {
			return err
		}
		dv.SetBytes(data)
		return nil
	}
	switch dt.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, err := toInt64(src)
		if err != nil {
			return err
		}
		if dv.OverflowInt(i) {
			return fmt.Errorf("value %d overflows %s", i, dt)
		}
		dv.SetInt(i)
		return nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		u, err := toUint64(src)
		if err != nil {
			return err
		}
		if dv.OverflowUint(u) {
			return fmt.Errorf("value %d overflows %s", u, dt)
		}
		dv.SetUint(u)
		return nil
	case reflect.Float32, reflect.Float64:
		f, err := toFloat64(src)
		if err != nil {
			return err
		}
		dv.SetFloat(f)
		return nil
	case reflect.String:
		switch v := src.(type) {
		case string:
			dv.SetString(v)
		case json.RawMessage:
			dv.SetString(string(v))
		case []byte:
			dv.SetString(string(v))
		case int64, uint64, float64, float32, bool, json.Number:
			dv.SetString(fmt.Sprint(v))
		case time.Time:
			dv.SetString(v.Format(time.RFC3339Nano))
		default:
			return fmt.Errorf("cannot store a %T in a %s", src, dt)
		}
		return nil
	case reflect.Bool:
		if b, ok := src.(bool); ok {
			dv.SetBool(b)
			return nil
		}
	case reflect.Slice:
		if dt.Elem().Kind() == reflect.Uint8 {
			switch v := src.(type) {
			case string:
				dv.SetBytes([]byte(v))
				return nil
			case json.RawMessage:
				dv.SetBytes(append([]byte(nil), v...))
				return nil
			}
		}
		if items, ok := src.([]any); ok {
			out := reflect.MakeSlice(dt, len(items), len(items))
			for i, it := range items {
				if err := assignValue(out.Index(i), it); err != nil {
					return fmt.Errorf("element %d: %w", i, err)
				}
			}
			dv.Set(out)
			return nil
		}
	}
	return fmt.Errorf("cannot store a %T in a %s", src, dt)
}

func toInt64(src any) (int64, error) {
	switch v := src.(type) {
	case int64:
		return v, nil
	case uint64:
		if v > math.MaxInt64 {
			return 0, fmt.Errorf("value %d overflows int64", v)
		}
		return int64(v), nil
	case string:
		return strconv.ParseInt(v, 10, 64)
	case json.Number:
		return v.Int64()
	}
	return 0, fmt.Errorf("cannot store a %T in an integer", src)
}

func toUint64(src any) (uint64, error) {
	switch v := src.(type) {
	case int64:
		if v < 0 {
			return 0, fmt.Errorf("negative value %d in an unsigned integer", v)
		}
		return uint64(v), nil
	case uint64:
		return v, nil
	case string:
		return strconv.ParseUint(v, 10, 64)
	case json.Number:
		return strconv.ParseUint(v.String(), 10, 64)
	}
	return 0, fmt.Errorf("cannot store a %T in an unsigned integer", src)
}

func toFloat64(src any) (float64, error) {
	switch v := src.(type) {
	case float64:
		return v, nil
	case float32:
		return float64(v), nil
	case int64:
		return float64(v), nil
	case uint64:
		return float64(v), nil
	case string:
		return strconv.ParseFloat(v, 64)
	case json.Number:
		return v.Float64()
	}
	return 0, fmt.Errorf("cannot store a %T in a float", src)
}
