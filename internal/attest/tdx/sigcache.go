package tdx

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// maxSigFacts bounds the cache of verified collateral signatures. One
// platform type needs six facts (TCB signing certificate, TCB info, QE
// identity, two CRLs and their parse); a site with a few FMSPCs and a
// collateral refresh in flight stays far below.
const maxSigFacts = 64

// sigCache remembers collateral signatures that verified, keyed by every
// byte the verification read (the signed bytes, the signature, the signer's
// and issuer's certificates, the pinned pool), so a boot storm does not
// repeat the same six ECDSA checks per admission. Collateral is shared by
// every machine of a platform type; per-machine signatures (PCK chain,
// QE report, quote) are never cached. Only successes are kept, and what
// depends on time (certificate validity, collateral and CRL freshness) or
// on other documents (revocation) is checked on every use.
type sigCache struct {
	mu    sync.Mutex
	facts map[[32]byte]any
}

// factKey hashes a kind and length-prefixed parts: no two different inputs
// share a key.
func factKey(kind string, parts ...[]byte) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, p := range append([][]byte{[]byte(kind)}, parts...) {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (c *sigCache) get(k [32]byte) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.facts[k]
	return v, ok
}

// put stores a fact; a full cache is emptied first (collateral rotates
// rarely, so this only bounds memory against hostile bundles).
func (c *sigCache) put(k [32]byte, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.facts == nil || len(c.facts) >= maxSigFacts {
		c.facts = make(map[[32]byte]any)
	}
	c.facts[k] = v
}

// validAt checks every certificate's validity period at now, what
// x509.Verify checked besides the (cached) signatures and constraints.
func validAt(chain []*x509.Certificate, now time.Time) error {
	for _, c := range chain {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return fmt.Errorf("x509: certificate %q is not valid at %s (valid %s to %s)", c.Subject.CommonName,
				now.Format(time.RFC3339), c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
		}
	}
	return nil
}

// poolID names the pinned pool a chain was verified against: a verifier
// whose Roots are replaced does not reuse facts about the old ones.
func poolID(p *x509.CertPool) []byte { return fmt.Appendf(nil, "%p", p) }
