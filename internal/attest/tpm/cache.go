package tpm

import (
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"time"
)

// Cache remembers what a Verifier already checked for an admission — EK
// chains and AK public areas — so the Verify that follows a Challenge of the
// same node does not do that work a second time. A chain counts only for
// the very root and intermediate pools it was checked against, for at most
// ChainCacheTTL and never past the certificate's NotAfter.
type Cache struct {
	mu     sync.Mutex
	chains bounded[chainEntry]
	aks    bounded[*ak]
}

// ChainCacheTTL bounds how long a checked chain is trusted without a new
// check, so a changed pool or a newly distrusted root takes effect soon.
const ChainCacheTTL = 10 * time.Minute

type chainEntry struct {
	roots, intermediates *x509.CertPool
	until                time.Time
}

// NewCache returns a cache of at most max chains and max AKs.
func NewCache(max int) *Cache {
	return &Cache{chains: newBounded[chainEntry](max), aks: newBounded[*ak](max)}
}

func (c *Cache) chainHit(cert *x509.Certificate, roots, inter *x509.CertPool, now time.Time) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.chains.m[sha256.Sum256(cert.Raw)]
	return ok && e.roots == roots && e.intermediates == inter && now.Before(e.until) && !now.Before(cert.NotBefore)
}

func (c *Cache) addChain(cert *x509.Certificate, roots, inter *x509.CertPool, now time.Time) {
	if c == nil {
		return
	}
	until := now.Add(ChainCacheTTL)
	if cert.NotAfter.Before(until) {
		until = cert.NotAfter
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chains.put(sha256.Sum256(cert.Raw), chainEntry{roots, inter, until})
}

// ak returns the checked AK of the public area b, parsing and checking it
// only if this cache has not seen b. A rejected AK is never cached.
func (c *Cache) ak(b []byte) (*ak, error) {
	if c == nil {
		return parseAK(b)
	}
	k := sha256.Sum256(b)
	c.mu.Lock()
	a, ok := c.aks.m[k]
	c.mu.Unlock()
	if ok {
		return a, nil
	}
	a, err := parseAK(b)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.aks.put(k, a)
	c.mu.Unlock()
	return a, nil
}

// bounded is a map of at most max entries that forgets the oldest first.
type bounded[V any] struct {
	max  int
	m    map[[32]byte]V
	keys [][32]byte
}

func newBounded[V any](max int) bounded[V] {
	return bounded[V]{max: max, m: make(map[[32]byte]V, max)}
}

func (b *bounded[V]) put(k [32]byte, v V) {
	if b.max <= 0 {
		return
	}
	if _, ok := b.m[k]; !ok {
		if len(b.keys) >= b.max {
			delete(b.m, b.keys[0])
			b.keys = b.keys[1:]
		}
		b.keys = append(b.keys, k)
	}
	b.m[k] = v
}
