package qailipc

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Column describes one result column: its name and PostgreSQL's type name (pg_type.typname:
// "int4", "text", "timestamptz"; arrays are "_int4").
type Column struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// Result is the answer to one statement: its columns, its rows with values decoded by
// column type, the command tag and the number of rows returned or affected.
type Result struct {
	// Columns describes the columns; empty for statements that return no rows.
	Columns []Column
	// Rows holds one []any per row, values in column order (see the package
	// documentation for the Go type of each PostgreSQL type).
	Rows [][]any
	// Command is the command tag: "SELECT 2", "INSERT 0 1", "CREATE TABLE".
	Command string
	// RowsAffected is the number of rows returned or affected.
	RowsAffected int64
}

// header is what every answer carries.
type header struct {
	ID    json.RawMessage `json:"id"`
	OK    bool            `json:"ok"`
	Error json.RawMessage `json:"error"`
}

func (h *header) head() *header { return h }

// answer is the decoding target of one response; every target embeds header.
type answer interface{ head() *header }

// plainAnswer is the answer of ops without result fields of interest.
type plainAnswer struct {
	header
	Command  string `json:"command"`
	Upstream string `json:"upstream"`
}

type helloAnswer struct {
	header
	Protocol int    `json:"protocol"`
	Server   string `json:"server"`
	Session  string `json:"session"`
}

type prepareAnswer struct {
	header
	Handle  string   `json:"handle"`
	Params  []string `json:"params"`
	Columns []Column `json:"columns"`
}

// wireResult is one statement's result as sent by query, execute, batch and full pipeline
// answers.
type wireResult struct {
	Columns      []Column            `json:"columns"`
	Rows         [][]json.RawMessage `json:"rows"`
	Command      string              `json:"command"`
	RowsAffected *int64              `json:"rows_affected"`
}

type queryAnswer struct {
	header
	wireResult
}

type batchAnswer struct {
	header
	Results []wireResult `json:"results"`
}

// pipelineAnswer covers the four pipeline shapes: column_major (what this client asks for),
// columnar, compact, and one full result per statement; and count_only.
type pipelineAnswer struct {
	header
	Columns      []Column              `json:"columns"`
	Counts       []int                 `json:"counts"`
	Values       [][]json.RawMessage   `json:"values"`
	Rows         [][][]json.RawMessage `json:"rows"`
	RowsAffected []int64               `json:"rows_affected"`
	Commands     []string              `json:"commands"`
	Results      []wireResult          `json:"results"`
	Count        *int64                `json:"count"`
}

// rowsFromCommand is the row count in a command tag ("UPDATE 3" → 3), for answers without
// rows_affected.
func rowsFromCommand(tag string) int64 {
	i := strings.LastIndexByte(tag, ' ')
	n, err := strconv.ParseInt(tag[i+1:], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// decoders returns one decoder per column.
func decoders(cols []Column, raw bool) []decoder {
	ds := make([]decoder, len(cols))
	for i, c := range cols {
		if raw {
			ds[i] = decodeAny
		} else {
			ds[i] = decoderFor(c.Type)
		}
	}
	return ds
}

// decodeRows decodes every value of rows with the column decoders.
func decodeRows(ds []decoder, rows [][]json.RawMessage) ([][]any, error) {
	out := make([][]any, len(rows))
	for i, row := range rows {
		if len(row) != len(ds) {
			return nil, fmt.Errorf("qailipc: malformed answer: row %d has %d values for %d columns", i, len(row), len(ds))
		}
		vals := make([]any, len(row))
		for k, raw := range row {
			if len(raw) == 4 && string(raw) == "null" {
				continue
			}
			v, err := ds[k](raw)
			if err != nil {
				return nil, fmt.Errorf("qailipc: row %d column %d: %w", i, k, err)
			}
			vals[k] = v
		}
		out[i] = vals
	}
	return out, nil
}

func (w *wireResult) result(raw bool) (*Result, error) {
	return buildResult(w.Columns, decoders(w.Columns, raw), w.Rows, w.Command, w.RowsAffected)
}

func buildResult(cols []Column, ds []decoder, rows [][]json.RawMessage, command string, affected *int64) (*Result, error) {
	decoded, err := decodeRows(ds, rows)
	if err != nil {
		return nil, err
	}
	if cols == nil {
		cols = []Column{}
	}
	r := &Result{Columns: cols, Rows: decoded, Command: command}
	if affected != nil {
		r.RowsAffected = *affected
	} else {
		r.RowsAffected = rowsFromCommand(command)
	}
	return r, nil
}

// results turns any pipeline answer shape into one Result per statement.
func (a *pipelineAnswer) results(raw bool) ([]*Result, error) {
	if a.Counts != nil {
		return a.columnMajor(raw)
	}
	if a.Commands != nil || (a.Results == nil && a.Rows != nil) {
		n := len(a.Commands)
		if len(a.Rows) != n || len(a.RowsAffected) != n {
			return nil, fmt.Errorf("qailipc: malformed columnar pipeline answer: %d commands, %d row lists, %d counts",
				n, len(a.Rows), len(a.RowsAffected))
		}
		ds := decoders(a.Columns, raw)
		out := make([]*Result, n)
		for i := range n {
			r, err := buildResult(a.Columns, ds, a.Rows[i], a.Commands[i], &a.RowsAffected[i])
			if err != nil {
				return nil, err
			}
			out[i] = r
		}
		return out, nil
	}
	out := make([]*Result, len(a.Results))
	var ds []decoder
	if a.Columns != nil {
		ds = decoders(a.Columns, raw)
	}
	for i := range a.Results {
		w := &a.Results[i]
		var r *Result
		var err error
		if a.Columns != nil { // compact: columns once
			r, err = buildResult(a.Columns, ds, w.Rows, w.Command, w.RowsAffected)
		} else {
			r, err = w.result(raw)
		}
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

// columnMajor rebuilds the rows of a column_major answer: Values holds one list per column with
// every statement's rows in order, and Counts how many rows each statement returned.
func (a *pipelineAnswer) columnMajor(raw bool) ([]*Result, error) {
	n := len(a.Counts)
	if len(a.Commands) != n || len(a.RowsAffected) != n || len(a.Values) != len(a.Columns) {
		return nil, fmt.Errorf("qailipc: malformed column_major pipeline answer: %d counts, %d commands, %d rows_affected, %d value lists for %d columns",
			n, len(a.Commands), len(a.RowsAffected), len(a.Values), len(a.Columns))
	}
	total := 0
	for i, c := range a.Counts {
		if c < 0 {
			return nil, fmt.Errorf("qailipc: malformed column_major pipeline answer: statement %d has %d rows", i, c)
		}
		total += c
	}
	for k, col := range a.Values {
		if len(col) != total {
			return nil, fmt.Errorf("qailipc: malformed column_major pipeline answer: column %d has %d values for %d rows", k, len(col), total)
		}
	}
	ds := decoders(a.Columns, raw)
	cols := a.Columns
	if cols == nil {
		cols = []Column{}
	}
	width := len(ds)
	cells := make([]any, total*width) // one backing array for every row's values
	out := make([]*Result, n)
	next := 0
	for i, count := range a.Counts {
		rows := make([][]any, count)
		for r := range rows {
			vals := cells[next*width : (next+1)*width : (next+1)*width]
			for k, d := range ds {
				raw := a.Values[k][next]
				if len(raw) == 4 && string(raw) == "null" {
					continue
				}
				v, err := d(raw)
				if err != nil {
					return nil, fmt.Errorf("qailipc: statement %d row %d column %d: %w", i, r, k, err)
				}
				vals[k] = v
			}
			rows[r] = vals
			next++
		}
		out[i] = &Result{Columns: cols, Rows: rows, Command: a.Commands[i], RowsAffected: a.RowsAffected[i]}
	}
	return out, nil
}
