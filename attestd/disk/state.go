package disk

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/palisade-cc/palisade/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// StateFile is the record the state disk keeps of its own use, relative to
// the mount point: which LUKS volume it is, when it was first mounted and
// how many times. It is the first thing written to a new volume (after the
// relabel to in-use), and every later boot reads it back and counts, so a
// node's console shows that it found its own data again.
const StateFile = "lib/palisade/disk.json"

type diskState struct {
	UUID       string    `json:"uuid"`
	FirstMount time.Time `json:"first_mount"`
	Mounts     uint64    `json:"mounts"`
}

// recordMount reads the record (absent on a new volume), checks it names
// this volume, counts this mount and writes it back atomically and durably
// (atomicfile.Write), so a power cut leaves
// either the old or the new record.
func (s *Step) recordMount(d *Disk) error {
	dir := filepath.Join(s.cfg.MountPoint, filepath.Dir(StateFile))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state record: %w", err)
	}
	p := filepath.Join(s.cfg.MountPoint, StateFile)
	var st diskState
	b, err := os.ReadFile(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		st = diskState{UUID: d.UUID, FirstMount: time.Now().UTC().Truncate(time.Second)}
	case err != nil:
		return fmt.Errorf("state record: %w", err)
	default:
		if err := json.Unmarshal(b, &st); err != nil {
			return fmt.Errorf("state record %s: %w", p, err)
		}
		if st.UUID != d.UUID {
			return fmt.Errorf("state record %s names volume %s, this is %s", p, st.UUID, d.UUID)
		}
	}
	st.Mounts++
	out, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(p, append(out, '\n'), 0o600); err != nil {
		return fmt.Errorf("state record: %w", err)
	}
	s.console("state uuid=%s mounts=%d first_mount=%s", st.UUID, st.Mounts, st.FirstMount.Format(time.RFC3339))
	return nil
}
