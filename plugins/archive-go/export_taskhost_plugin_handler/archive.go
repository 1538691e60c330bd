// Package export_taskhost_plugin_handler archives tasks to JSON Lines files
// (Go version).
//
// It writes exactly what the Rust `archive` plugin writes (see
// plugins/archive/src/lib.rs): one file per non-empty batch named
// `<first id:020>-<last id:020>-<attempt of first task>-<16 hex random>.jsonl`,
// one JSON object per task with the fields id, queue, unique_key, attempt,
// enqueued_at_ms and payload (UTF-8 text) or payload_base64 (other bytes).
// The file is written under a hidden temporary name, synced, renamed, and
// the directory synced; on an I/O error every task of the batch is retried.
//
// Configuration: `dir`, the guest path of a preopened directory (default
// `/archive`).
package export_taskhost_plugin_handler

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	host "wit_component/taskhost_plugin_host"
	types "wit_component/taskhost_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

const defaultDir = "/archive"

// How many random names are tried before giving up on finding a free one.
const nameAttempts = 8

// jsonString appends s as a JSON string literal, escaped as serde_json does:
// quote, backslash and control characters (short forms where JSON has one,
// else \u00xx with lower-case hex); everything else as it is.
func jsonString(b *strings.Builder, s string) {
	const hexDigits = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if c < 0x20 {
				b.WriteString(`\u00`)
				b.WriteByte(hexDigits[c>>4])
				b.WriteByte(hexDigits[c&15])
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
}

// record appends the JSON line of one task, with its trailing newline.
func record(b *strings.Builder, t *types.Task) {
	b.WriteString(`{"id":`)
	b.WriteString(strconv.FormatUint(t.Id, 10))
	b.WriteString(`,"queue":`)
	jsonString(b, t.Queue)
	b.WriteString(`,"unique_key":`)
	if t.UniqueKey.IsSome() {
		jsonString(b, t.UniqueKey.Some())
	} else {
		b.WriteString("null")
	}
	fmt.Fprintf(b, `,"attempt":%d,"enqueued_at_ms":%d`, t.Attempt, t.EnqueuedAtMs)
	if utf8.Valid(t.Payload) {
		b.WriteString(`,"payload":`)
		jsonString(b, string(t.Payload))
	} else {
		b.WriteString(`,"payload_base64":"`)
		b.WriteString(base64.StdEncoding.EncodeToString(t.Payload))
		b.WriteByte('"')
	}
	b.WriteString("}\n")
}

func fileName(first, last uint64, attempt uint32) (string, error) {
	var random [8]byte
	if _, err := rand.Read(random[:]); err != nil {
		return "", err
	}
	return fmt.Sprintf("%020d-%020d-%d-%s.jsonl", first, last, attempt, hex.EncodeToString(random[:])), nil
}

// writeBatch writes the batch to one new file in dir; answers its path.
func writeBatch(dir string, batch []types.Task) (string, error) {
	var b strings.Builder
	for i := range batch {
		record(&b, &batch[i])
	}
	body := []byte(b.String())
	for range nameAttempts {
		name, err := fileName(batch[0].Id, batch[len(batch)-1].Id, batch[0].Attempt)
		if err != nil {
			return "", fmt.Errorf("cannot draw a random file name: %w", err)
		}
		final := filepath.Join(dir, name)
		tmp := filepath.Join(dir, "."+name+".tmp")
		if _, err := os.Lstat(final); err == nil {
			continue
		}
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("cannot create %s: %w", tmp, err)
		}
		_, err = f.Write(body)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, final)
		}
		if err != nil {
			_ = os.Remove(tmp) // best effort: the original error is what matters
			return "", fmt.Errorf("cannot write %s: %w", tmp, err)
		}
		return final, nil
	}
	return "", fmt.Errorf("cannot find a free file name in %s", dir)
}

// parseTempName answers the first task's id and attempt in a temporary
// file's name (`.<first>-<last>-<attempt>-<random>.jsonl.tmp`).
func parseTempName(name string) (uint64, uint32, bool) {
	if !strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".jsonl.tmp") {
		return 0, 0, false
	}
	parts := strings.Split(name[1:len(name)-len(".jsonl.tmp")], "-")
	if len(parts) != 4 || len(parts[3]) != 16 {
		return 0, 0, false
	}
	first, err1 := strconv.ParseUint(parts[0], 10, 64)
	_, err2 := strconv.ParseUint(parts[1], 10, 64)
	attempt, err3 := strconv.ParseUint(parts[2], 10, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, false
	}
	return first, uint32(attempt), true
}

// removeOrphans removes the temporary files that earlier, unfinished
// attempts of this batch's tasks left (a kill or a time limit mid-write).
// Best effort.
func removeOrphans(dir string, batch []types.Task) {
	attempts := make(map[uint64]uint32, len(batch))
	for _, t := range batch {
		attempts[t.Id] = t.Attempt
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		first, attempt, ok := parseTempName(e.Name())
		if !ok {
			continue
		}
		if now, live := attempts[first]; live && attempt < now {
			path := filepath.Join(dir, e.Name())
			if err := os.Remove(path); err != nil {
				host.Log(host.Level_Warn, fmt.Sprintf("archive: cannot remove %s: %v", path, err))
			} else {
				host.Log(host.Level_Info, fmt.Sprintf("archive: removed %s left by an unfinished attempt", path))
			}
		}
	}
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Handle archives the batch; answers the same outcome for every task.
func Handle(batch []types.Task) []types.Outcome {
	if len(batch) == 0 {
		return nil
	}
	dir := host.GetConfig("dir").SomeOr("")
	if dir == "" {
		dir = defaultDir
	}
	for _, t := range batch {
		if t.Attempt > 1 {
			removeOrphans(dir, batch)
			break
		}
	}
	outcome := types.MakeOutcomeDone()
	if path, err := writeBatch(dir, batch); err != nil {
		host.Log(host.Level_Error, "archive: "+err.Error())
		outcome = types.MakeOutcomeRetry(witTypes.None[uint64]())
	} else {
		// The rename is durable once the directory is synced; if that is
		// not allowed, retrying would only archive the batch twice.
		if err := syncDir(dir); err != nil {
			host.Log(host.Level_Warn, fmt.Sprintf("archive: cannot sync directory %s: %v", dir, err))
		}
		host.Log(host.Level_Debug, fmt.Sprintf("archive: wrote %d task(s) to %s", len(batch), path))
	}
	outcomes := make([]types.Outcome, len(batch))
	for i := range outcomes {
		outcomes[i] = outcome
	}
	return outcomes
}
