package keyd

import (
	"context"
	"encoding/hex"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store"
)

// Log is what keyd needs of the admission log; *auditlog.Log implements it.
// AppendTx runs inside keyd's own store.Update, so a record and the
// registry write it describes commit together or not at all.
type Log interface {
	AppendTx(tx store.Tx, r auditlog.Record) (int64, error)
	Checkpoint(ctx context.Context) (auditlog.Checkpoint, []byte, error)
	Size(ctx context.Context) (int64, error)
	Entries(ctx context.Context, start, end int64) ([][]byte, error)
	ProveInclusion(ctx context.Context, index, treeSize int64) (tlog.RecordProof, error)
	ProveConsistency(ctx context.Context, oldSize, newSize int64) (tlog.TreeProof, error)
}

var _ Log = (*auditlog.Log)(nil)

// Events that share an auditlog record type are told apart by
// Attrs["event"].
const (
	eventRecover       = "recover"
	eventRevokeNode    = "revoke-node"
	eventRevokeVersion = "revoke-version"
	eventReenrol       = "reenrol-disks"
	eventManifest      = "manifest"
	eventDenialSummary = "denial-summary"
	eventReplicaJoined = "replica-joined"
)

// appendLog appends r and returns its index.
func (k *Keyd) appendLog(tx store.Tx, r auditlog.Record) (uint64, error) {
	if r.Time.IsZero() {
		r.Time = k.now().UTC()
	}
	i, err := k.log.AppendTx(tx, r)
	return uint64(i), err
}

func event(e string, kv ...string) map[string]string {
	m := map[string]string{"event": e}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func hexs(b []byte) string { return hex.EncodeToString(b) }

func joinUUIDs(u []string) string { return strings.Join(u, ",") }

func countStr(n uint64) string { return strconv.FormatUint(n, 10) }

func hashes[T ~[]tlog.Hash](p T) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = append([]byte(nil), p[i][:]...)
	}
	return out
}
