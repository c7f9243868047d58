package dhcp

import (
	"sync"
	"time"
)

// table is the in-memory view of every lease, the only place allocation
// decisions are made. The store is written behind it: a change is applied
// here first, then queued for commit, and the client is answered once the
// commit returned.
type table struct {
	mu          sync.Mutex
	subnets     []*subnet
	byIP        map[uint32]*lease
	byMAC       []map[string]*lease // per subnet index
	cursor      []uint32            // per subnet: where the next free scan starts
	offerHold   time.Duration
	declineHold time.Duration
}

func newTable(c *compiled) *table {
	t := &table{subnets: c.subnets, byIP: map[uint32]*lease{}, offerHold: c.offerHold, declineHold: c.declineHold}
	for _, s := range c.subnets {
		t.byMAC = append(t.byMAC, map[string]*lease{})
		t.cursor = append(t.cursor, s.start)
	}
	return t
}

// subnetOf returns the configured subnet that contains ip.
func (t *table) subnetOf(ip uint32) *subnet {
	for _, s := range t.subnets {
		if s.contains(ip) {
			return s
		}
	}
	return nil
}

// restore puts a lease read from disk back; leases outside every configured
// subnet (the configuration changed) are reported and left alone.
func (t *table) restore(l *lease) bool {
	s := t.subnetOf(l.ip)
	if s == nil {
		return false
	}
	t.byIP[l.ip] = l
	l.stored = true
	if l.state == stateBound {
		t.byMAC[s.idx][l.mac] = l
	}
	return true
}

// usable reports whether mac may be given ip at now: inside the range or
// reserved for mac, not reserved for another client, and not held by anyone
// else (an expired lease holds nothing).
func (t *table) usable(s *subnet, ip uint32, mac string, now int64) bool {
	if owner, ok := s.reservedByIP[ip]; ok {
		if owner != mac {
			return false
		}
	} else if !s.inRange(ip) {
		return false
	}
	l := t.byIP[ip]
	if l == nil || l.expiry <= now {
		return true
	}
	return l.state != stateDeclined && l.mac == mac
}

// take makes mac the holder of ip in state with the given expiry, unlinking
// whatever held ip and whatever mac held before in the subnet. It returns the
// lease and, if mac moved away from an older bound address, that address.
func (t *table) take(s *subnet, ip uint32, mac string, state uint8, expiry int64) (l *lease, moved uint32, hadOld bool) {
	if old := t.byMAC[s.idx][mac]; old != nil && old.ip != ip {
		delete(t.byIP, old.ip)
		moved, hadOld = old.ip, old.stored
	}
	stored := false
	if prev := t.byIP[ip]; prev != nil {
		stored = prev.stored
		if prev.mac != mac {
			if cur := t.byMAC[s.idx][prev.mac]; cur == prev {
				delete(t.byMAC[s.idx], prev.mac)
			}
		}
	}
	l = &lease{ip: ip, mac: mac, state: state, expiry: expiry, stored: stored}
	t.byIP[ip] = l
	t.byMAC[s.idx][mac] = l
	return l, moved, hadOld
}

// offer picks an address for mac in s (RFC 2131 §4.3.1 order: reservation,
// the client's current or last address, the requested address, then any free
// one) and holds it for offerHold. A client that is bound keeps its lease
// unchanged. ok is false when the pool is exhausted.
func (t *table) offer(s *subnet, mac string, requested uint32, now time.Time) (ip uint32, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := now.UnixNano()
	hold := now.Add(t.offerHold).UnixNano()
	pick := func(ip uint32) (uint32, bool) {
		if cur := t.byIP[ip]; cur != nil && cur.mac == mac && cur.state == stateBound && cur.expiry > n {
			return ip, true
		}
		t.take(s, ip, mac, stateOffered, hold)
		return ip, true
	}
	if r, ok := s.reservedByMAC[mac]; ok && t.usable(s, r, mac, n) {
		return pick(r)
	}
	if old := t.byMAC[s.idx][mac]; old != nil && old.state != stateDeclined && t.usable(s, old.ip, mac, n) {
		return pick(old.ip)
	}
	if requested != 0 && s.contains(requested) && t.usable(s, requested, mac, n) {
		return pick(requested)
	}
	size := uint64(s.end) - uint64(s.start) + 1
	c := t.cursor[s.idx]
	for i := uint64(0); i < size; i++ {
		if c < s.start || c > s.end {
			c = s.start
		}
		cand := c
		c++
		if t.usable(s, cand, mac, n) {
			t.cursor[s.idx] = c
			return pick(cand)
		}
	}
	return 0, false
}

// bind commits mac to ip for the subnet's lease time if it may have it
// (RFC 2131 §4.3.2). It returns the writes that make the change durable.
func (t *table) bind(s *subnet, mac string, ip uint32, now time.Time) (*lease, []write, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !s.contains(ip) || !t.usable(s, ip, mac, now.UnixNano()) {
		return nil, nil, false
	}
	l, moved, hadOld := t.take(s, ip, mac, stateBound, now.Add(s.leaseTime).UnixNano())
	l.stored = true
	ws := []write{{key: leaseKey(ip), val: encodeLease(l)}}
	if hadOld {
		ws = append(ws, write{key: leaseKey(moved)})
	}
	return l, ws, true
}

// forgetOffer drops an offer mac did not take (it chose another server),
// and returns the delete of a stale record the offer had replaced.
func (t *table) forgetOffer(s *subnet, mac string) []write {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.byMAC[s.idx][mac]; l != nil && l.state == stateOffered {
		delete(t.byMAC[s.idx], mac)
		delete(t.byIP, l.ip)
		if l.stored {
			return []write{{key: leaseKey(l.ip)}}
		}
	}
	return nil
}

// release ends mac's lease on ip (RFC 2131 §4.3.4); other clients' leases
// are not touched.
func (t *table) release(s *subnet, mac string, ip uint32) ([]write, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byIP[ip]
	if l == nil || l.mac != mac || l.state != stateBound {
		return nil, false
	}
	delete(t.byIP, ip)
	if t.byMAC[s.idx][mac] == l {
		delete(t.byMAC[s.idx], mac)
	}
	return []write{{key: leaseKey(ip)}}, true
}

// decline marks ip unusable for declineHold after mac found it in use
// (RFC 2131 §4.3.3). Only the client that holds or was offered ip may.
func (t *table) decline(s *subnet, mac string, ip uint32, now time.Time) ([]write, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byIP[ip]
	if l == nil || l.mac != mac || l.state == stateDeclined {
		return nil, false
	}
	if t.byMAC[s.idx][mac] == l {
		delete(t.byMAC[s.idx], mac)
	}
	d := &lease{ip: ip, state: stateDeclined, expiry: now.Add(t.declineHold).UnixNano(), stored: true}
	t.byIP[ip] = d
	return []write{{key: leaseKey(ip), val: encodeLease(d)}}, true
}

// sweep forgets every lease that expired by now and returns the deletes for
// the ones that were on disk.
func (t *table) sweep(now time.Time) []write {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := now.UnixNano()
	var ws []write
	for ip, l := range t.byIP {
		if l.expiry > n {
			continue
		}
		delete(t.byIP, ip)
		if s := t.subnetOf(ip); s != nil && l.state != stateDeclined && t.byMAC[s.idx][l.mac] == l {
			delete(t.byMAC[s.idx], l.mac)
		}
		if l.stored {
			ws = append(ws, write{key: leaseKey(ip)})
		}
	}
	return ws
}

// inUse counts bound, unexpired leases.
func (t *table) inUse(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, c := now.UnixNano(), 0
	for _, l := range t.byIP {
		if l.state == stateBound && l.expiry > n {
			c++
		}
	}
	return c
}

// lookup returns a copy of the lease on ip, for tests and the API.
func (t *table) lookup(ip uint32) (lease, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byIP[ip]
	if l == nil {
		return lease{}, false
	}
	return *l, true
}
