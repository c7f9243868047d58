package keyd

import (
	"context"
	"fmt"
	"testing"

	"github.com/palisade-cc/palisade/keyd/auditlog"
)

// sizeLog is a Log whose checkpoints are of a settable size; it counts
// how many it signed.
type sizeLog struct {
	Log
	size   int64
	signed int
}

func (l *sizeLog) Checkpoint(context.Context) (auditlog.Checkpoint, []byte, error) {
	l.signed++
	return auditlog.Checkpoint{Size: l.size}, []byte(fmt.Sprintf("checkpoint %d", l.size)), nil
}

func TestCheckpointCovering(t *testing.T) {
	ctx := context.Background()
	l := &sizeLog{size: 5}
	var c checkpoints
	for _, want := range []struct {
		need   uint64
		note   string
		signed int
	}{
		{3, "checkpoint 5", 1},
		{5, "checkpoint 5", 1}, // covered: no new signature
		{1, "checkpoint 5", 1},
	} {
		got, err := c.covering(ctx, l, want.need)
		if err != nil || string(got) != want.note || l.signed != want.signed {
			t.Errorf("covering(%d) = %q, %v after %d signatures; want %q after %d", want.need, got, err, l.signed, want.note, want.signed)
		}
	}
	l.size = 9
	if got, err := c.covering(ctx, l, 6); err != nil || string(got) != "checkpoint 9" || l.signed != 2 {
		t.Errorf("covering(6) after growth = %q, %v after %d signatures; want a new checkpoint of 9", got, err, l.signed)
	}
	// A log that reports fewer entries than keyd committed is an error,
	// never a checkpoint that leaves the node's entry out.
	if got, err := c.covering(ctx, l, 12); err == nil {
		t.Errorf("covering(12) of a 9-entry log = %q, want an error", got)
	}
}
