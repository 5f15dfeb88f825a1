package qailipc

// Results: protocol JSON values → Go values, chosen by the column's PostgreSQL type name
// (docs/values.md, "Results"). Every decoder receives the raw JSON of one value; SQL NULL
// (JSON null) never reaches a decoder and is always nil.

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Range is a PostgreSQL range value (int4range, tstzrange, ...). Results of a range type
// decode to Range, with bounds decoded like a value of the element type (int64 for
// int4range, a decimal string for numrange, time.Time for daterange/tsrange/tstzrange) and
// nil for an unbounded side; multiranges decode to []Range. A Range passed as a parameter
// is sent as PostgreSQL's range literal.
type Range struct {
	// Lower and Upper are the bounds; nil means unbounded.
	Lower, Upper any
	// LowerInc and UpperInc say whether each bound is included.
	LowerInc, UpperInc bool
	// Empty marks the empty range, which has no bounds.
	Empty bool
}

// String returns the range in PostgreSQL's literal syntax, e.g. [1,10).
func (r Range) String() string {
	s, err := r.literal()
	if err != nil {
		return "<invalid range: " + err.Error() + ">"
	}
	return s
}

func (r Range) literal() (string, error) {
	if r.Empty {
		return "empty", nil
	}
	var b strings.Builder
	if r.LowerInc {
		b.WriteByte('[')
	} else {
		b.WriteByte('(')
	}
	for i, bound := range []any{r.Lower, r.Upper} {
		if i == 1 {
			b.WriteByte(',')
		}
		if bound == nil {
			continue
		}
		text, err := paramText(bound)
		if err != nil {
			return "", err
		}
		b.WriteByte('"')
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(text))
		b.WriteByte('"')
	}
	if r.UpperInc {
		b.WriteByte(']')
	} else {
		b.WriteByte(')')
	}
	return b.String(), nil
}

// decoder turns the raw JSON of one non-null value into a Go value.
type decoder func(raw []byte) (any, error)

var (
	decoderMu    sync.RWMutex
	decoderCache = map[string]decoder{}
)

// decoderFor returns the decoder for a column type name.
func decoderFor(typ string) decoder {
	decoderMu.RLock()
	d, ok := decoderCache[typ]
	decoderMu.RUnlock()
	if ok {
		return d
	}
	d = makeDecoder(typ)
	decoderMu.Lock()
	decoderCache[typ] = d
	decoderMu.Unlock()
	return d
}

func makeDecoder(typ string) decoder {
	switch typ {
	case "bool":
		return decodeBool
	case "int2", "int4", "int8", "oid", "xid", "cid", "xid8", "money",
		"regclass", "regtype", "regproc", "regprocedure", "regoper", "regoperator",
		"regconfig", "regdictionary", "regnamespace", "regrole", "regcollation":
		return decodeInt
	case "float4":
		return decodeFloat32
	case "float8":
		return decodeFloat64
	case "json", "jsonb":
		return decodeJSON
	case "bytea":
		return decodeBytea
	case "date":
		return decodeDate
	case "timestamp":
		return decodeTimestamp
	case "timestamptz":
		return decodeTimestamp
	}
	if strings.HasPrefix(typ, "_") && len(typ) > 1 {
		elem := typ[1:]
		return arrayDecoder(decoderFor(elem), elem == "json" || elem == "jsonb")
	}
	if base, ok := strings.CutSuffix(typ, "multirange"); ok {
		return multirangeDecoder(rangeDecoder(rangeBound(base)))
	}
	if base, ok := strings.CutSuffix(typ, "range"); ok {
		return rangeDecoder(rangeBound(base))
	}
	// numeric, text types, uuid, time, timetz, interval, network types, enums, ... arrive
	// as strings; composites and records as objects and arrays; the fallback as hex strings.
	return decodeAny
}

// rangeBound returns the decoder of the bounds of the built-in range type <base>range.
func rangeBound(base string) decoder {
	switch base {
	case "int4", "int8":
		return decodeInt
	case "ts", "tstz":
		return decodeTimestamp
	case "date":
		return decodeDate
	}
	return decodeAny
}

// rawDecoder is used for every column when Options.Raw is set.
func rawDecoder(string) decoder { return decodeAny }

func decodeAny(raw []byte) (any, error) {
	if len(raw) > 0 && raw[0] == '"' {
		return decodeString(raw)
	}
	var v any
	if err := unmarshalNumbers(raw, &v); err != nil {
		return nil, err
	}
	return v, nil
}

func decodeString(raw []byte) (any, error) {
	// Fast path: no escapes.
	if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && bytes.IndexByte(raw[1:len(raw)-1], '\\') < 0 {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	return s, nil
}

func decodeBool(raw []byte) (any, error) {
	switch string(raw) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return decodeAny(raw)
}

// decodeInt returns an int64, or a uint64 for an xid8 above the int64 range.
func decodeInt(raw []byte) (any, error) {
	if i, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
		return i, nil
	}
	if u, err := strconv.ParseUint(string(raw), 10, 64); err == nil {
		return u, nil
	}
	return decodeAny(raw)
}

func decodeFloat64(raw []byte) (any, error) {
	if len(raw) > 0 && raw[0] == '"' {
		return nonFinite(raw, 64)
	}
	return strconv.ParseFloat(string(raw), 64)
}

func decodeFloat32(raw []byte) (any, error) {
	if len(raw) > 0 && raw[0] == '"' {
		f, err := nonFinite(raw, 32)
		if err != nil {
			return nil, err
		}
		return float32(f.(float64)), nil
	}
	f, err := strconv.ParseFloat(string(raw), 32)
	return float32(f), err
}

func nonFinite(raw []byte, bits int) (any, error) {
	switch string(raw) {
	case `"NaN"`:
		return math.NaN(), nil
	case `"Infinity"`:
		return math.Inf(1), nil
	case `"-Infinity"`:
		return math.Inf(-1), nil
	}
	return nil, fmt.Errorf("qailipc: float%d value %s is neither a number nor NaN/Infinity", bits, raw)
}

func decodeJSON(raw []byte) (any, error) {
	return json.RawMessage(bytes.Clone(raw)), nil
}

func decodeBytea(raw []byte) (any, error) {
	v, err := decodeString(raw)
	if err != nil {
		return nil, err
	}
	s := v.(string)
	h, ok := strings.CutPrefix(s, `\x`)
	if !ok {
		return nil, fmt.Errorf("qailipc: bytea value %.40q is not in hex format", s)
	}
	return hex.DecodeString(h)
}

// decodeDate returns a time.Time at midnight UTC; "infinity", "-infinity" and BC dates
// stay strings.
func decodeDate(raw []byte) (any, error) { return decodeDateTime(raw, false) }

// decodeTimestamp returns a time.Time: in UTC for timestamptz (which the daemon always
// sends in UTC, with Z) and for timestamp (which has no zone). "infinity", "-infinity" and
// BC timestamps stay strings.
func decodeTimestamp(raw []byte) (any, error) { return decodeDateTime(raw, true) }

func decodeDateTime(raw []byte, withTime bool) (any, error) {
	v, err := decodeString(raw)
	if err != nil {
		return nil, err
	}
	s := v.(string)
	if t, ok := parseDateTime(s, withTime); ok {
		return t, nil
	}
	return s, nil
}

// parseDateTime parses YYYY-MM-DD (years may have more than four digits), followed when
// withTime by THH:MM:SS, an optional fraction of up to 9 digits and an optional Z.
func parseDateTime(s string, withTime bool) (time.Time, bool) {
	num := func(s string) (int, bool) {
		if s == "" || len(s) > 9 {
			return 0, false
		}
		n := 0
		for i := 0; i < len(s); i++ {
			if s[i] < '0' || s[i] > '9' {
				return 0, false
			}
			n = n*10 + int(s[i]-'0')
		}
		return n, true
	}
	datePart, timePart := s, ""
	if withTime {
		var ok bool
		if datePart, timePart, ok = strings.Cut(s, "T"); !ok {
			return time.Time{}, false
		}
	}
	ys, rest, ok1 := strings.Cut(datePart, "-")
	ms, ds, ok2 := strings.Cut(rest, "-")
	if !ok1 || !ok2 || len(ys) < 4 || len(ms) != 2 || len(ds) != 2 {
		return time.Time{}, false
	}
	y, ok1 := num(ys)
	mo, ok2 := num(ms)
	d, ok3 := num(ds)
	if !ok1 || !ok2 || !ok3 {
		return time.Time{}, false
	}
	if !withTime {
		return time.Date(y, time.Month(mo), d, 0, 0, 0, 0, time.UTC), true
	}
	timePart = strings.TrimSuffix(timePart, "Z")
	clock, frac, hasFrac := strings.Cut(timePart, ".")
	if len(clock) != 8 || clock[2] != ':' || clock[5] != ':' {
		return time.Time{}, false
	}
	h, ok1 := num(clock[0:2])
	mi, ok2 := num(clock[3:5])
	sec, ok3 := num(clock[6:8])
	if !ok1 || !ok2 || !ok3 {
		return time.Time{}, false
	}
	nsec := 0
	if hasFrac {
		f, ok := num(frac)
		if !ok {
			return time.Time{}, false
		}
		for i := len(frac); i < 9; i++ {
			f *= 10
		}
		nsec = f
	}
	return time.Date(y, time.Month(mo), d, h, mi, sec, nsec, time.UTC), true
}

// arrayDecoder decodes a JSON array, nested for each dimension, elements by elem. For
// json/jsonb arrays every element is one JSON value, never a further dimension.
func arrayDecoder(elem decoder, jsonElems bool) decoder {
	var decode decoder
	decode = func(raw []byte) (any, error) {
		if len(raw) == 0 || raw[0] != '[' {
			return decodeAny(raw)
		}
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, err
		}
		out := make([]any, len(items))
		for i, it := range items {
			var err error
			switch {
			case string(it) == "null":
				out[i] = nil
			case !jsonElems && len(it) > 0 && it[0] == '[':
				out[i], err = decode(it)
			default:
				out[i], err = elem(it)
			}
			if err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return decode
}

type wireRange struct {
	Empty    bool            `json:"empty"`
	Lower    json.RawMessage `json:"lower"`
	Upper    json.RawMessage `json:"upper"`
	LowerInc bool            `json:"lower_inc"`
	UpperInc bool            `json:"upper_inc"`
}

func rangeDecoder(bound decoder) decoder {
	return func(raw []byte) (any, error) {
		if len(raw) == 0 || raw[0] != '{' {
			return decodeAny(raw)
		}
		var w wireRange
		if err := json.Unmarshal(raw, &w); err != nil {
			return nil, err
		}
		if w.Empty {
			return Range{Empty: true}, nil
		}
		r := Range{LowerInc: w.LowerInc, UpperInc: w.UpperInc}
		var err error
		if len(w.Lower) > 0 && string(w.Lower) != "null" {
			if r.Lower, err = bound(w.Lower); err != nil {
				return nil, err
			}
		}
		if len(w.Upper) > 0 && string(w.Upper) != "null" {
			if r.Upper, err = bound(w.Upper); err != nil {
				return nil, err
			}
		}
		return r, nil
	}
}

func multirangeDecoder(one decoder) decoder {
	return func(raw []byte) (any, error) {
		if len(raw) == 0 || raw[0] != '[' {
			return decodeAny(raw)
		}
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, err
		}
		out := make([]Range, len(items))
		for i, it := range items {
			v, err := one(it)
			if err != nil {
				return nil, err
			}
			r, ok := v.(Range)
			if !ok {
				return nil, fmt.Errorf("qailipc: multirange element %s is not a range object", it)
			}
			out[i] = r
		}
		return out, nil
	}
}
