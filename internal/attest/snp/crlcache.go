package snp

import (
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"time"
)

// maxCRLFacts bounds the verified-CRL cache: one CRL per product line and
// key kind (VCEK, VLEK) is current at a time, so a few dozen entries hold
// every CRL a verifier uses plus the ones just replaced.
const maxCRLFacts = 32

// crlKey names one verification: these exact CRL bytes under this exact
// issuer certificate. Anything else (a CRL that changed by one byte, another
// ARK) is a different key and is verified from scratch.
type crlKey struct{ crl, issuer [sha256.Size]byte }

// crlFact is a CRL whose signature verified under the key's issuer. The
// signature is a property of the bytes and the issuer and cannot change;
// whether the CRL is current is not cached and is checked on every use.
type crlFact struct {
	crl        *x509.RevocationList
	nextUpdate time.Time
}

// crlCache remembers verified CRLs so a boot storm does not repeat an
// RSA-4096 signature check per admission on the same few kilobytes.
type crlCache struct {
	mu    sync.Mutex
	facts map[crlKey]crlFact
}

func newCRLKey(der []byte, issuer *x509.Certificate) crlKey {
	return crlKey{crl: sha256.Sum256(der), issuer: sha256.Sum256(issuer.Raw)}
}

// get returns the CRL verified under k if it is still before its
// NextUpdate at now; a fact past NextUpdate is dropped, never served.
func (c *crlCache) get(k crlKey, now time.Time) (*x509.RevocationList, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.facts[k]
	if !ok {
		return nil, false
	}
	if !now.Before(f.nextUpdate) {
		delete(c.facts, k)
		return nil, false
	}
	return f.crl, true
}

// put records that crl (parsed from the bytes in k) verified under k's
// issuer. When full it first drops facts past NextUpdate, then the one
// that expires soonest, so the cache stays bounded whatever CRLs a
// collateral source serves.
func (c *crlCache) put(k crlKey, crl *x509.RevocationList, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.facts == nil {
		c.facts = make(map[crlKey]crlFact)
	}
	if _, ok := c.facts[k]; !ok && len(c.facts) >= maxCRLFacts {
		var victim crlKey
		var soonest time.Time
		for fk, f := range c.facts {
			if !now.Before(f.nextUpdate) {
				delete(c.facts, fk)
				continue
			}
			if soonest.IsZero() || f.nextUpdate.Before(soonest) {
				victim, soonest = fk, f.nextUpdate
			}
		}
		if len(c.facts) >= maxCRLFacts {
			delete(c.facts, victim)
		}
	}
	c.facts[k] = crlFact{crl: crl, nextUpdate: crl.NextUpdate}
}

func (c *crlCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.facts)
}
