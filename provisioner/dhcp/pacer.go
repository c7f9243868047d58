package dhcp

import "time"

// maxSpread bounds how far a batch's ACKs are spread out after its commit.
const maxSpread = 20 * time.Millisecond

// pacer releases ACKs in the rhythm their REQUESTs arrived. Group commit
// answers a whole batch at once when its fsync returns; a slow fsync would
// turn a steady request stream into one burst of hundreds of ACKs, which a
// relay agent or a client with a small receive buffer drops. Each ACK
// instead leaves at commit time plus its REQUEST's offset in the batch
// (capped at maxSpread), so the answers have the spacing of the questions,
// and none leaves before its lease is on disk.
type pacer struct {
	in      chan paced
	stopped chan struct{}
}

type paced struct {
	at time.Time
	fn func()
}

func newPacer(size int) *pacer {
	return &pacer{in: make(chan paced, size), stopped: make(chan struct{})}
}

// releaseAt is when the ACK for a request that arrived at arrived leaves,
// its batch having begun with a request at first and committed at committed.
func releaseAt(arrived, first, committed time.Time) time.Time {
	off := arrived.Sub(first)
	if off < 0 {
		off = 0
	}
	if off > maxSpread {
		off = maxSpread
	}
	return committed.Add(off)
}

func (p *pacer) run() {
	defer close(p.stopped)
	for x := range p.in {
		if d := time.Until(x.at); d > 0 {
			time.Sleep(d)
		}
		x.fn()
	}
}

// close sends what is queued and stops.
func (p *pacer) close() {
	close(p.in)
	<-p.stopped
}
