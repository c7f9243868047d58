package snp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/google/go-sev-guest/verify/trust"
)

// MaxCollateralSize bounds one collateral file (a VCEK is ~1.4 KiB, the
// cert_chain ~4 KiB, a CRL a few KiB).
const MaxCollateralSize = 1 << 20

// Collateral is a trust.HTTPSGetter that serves AMD KDS collateral (VCEK and
// VLEK certificates, cert_chain, CRLs) from an offline bundle directory and an
// on-disk cache, and reaches the network only when Network is set.
//
// Bundle layout: a KDS URL maps to a file under Dir (and CacheDir) by
// BundlePath, e.g.
//
//	https://kdsintf.amd.com/vcek/v1/Milan/cert_chain
//	  → kdsintf.amd.com/vcek/v1/Milan/cert_chain          (PEM: ASK then ARK)
//	https://kdsintf.amd.com/vcek/v1/Milan/crl
//	  → kdsintf.amd.com/vcek/v1/Milan/crl                 (DER CRL signed by the ARK)
//	https://kdsintf.amd.com/vlek/v1/Milan/crl
//	  → kdsintf.amd.com/vlek/v1/Milan/crl                 (DER CRL for the ASVK/VLEK)
//	https://kdsintf.amd.com/vcek/v1/Milan/<chip-id hex>?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115
//	  → kdsintf.amd.com/vcek/v1/Milan/<chip-id hex>/blSPL=3,snpSPL=8,teeSPL=0,ucodeSPL=115
//	                                                      (DER VCEK; query keys sorted)
//
// Nothing served is trusted: the Verifier checks every certificate and CRL
// against its pinned roots. The zero Collateral has neither bundle nor cache
// and refuses the network, so every lookup fails and says why.
type Collateral struct {
	// Dir is the read-only offline bundle; empty means none.
	Dir string
	// CacheDir receives what was fetched from the network and is read
	// after Dir; empty means no cache.
	CacheDir string
	// Network allows fetching from the KDS when neither Dir nor CacheDir
	// holds the URL.
	Network bool
	// Fetch fetches from the network; nil means trust.SimpleHTTPSGetter.
	Fetch trust.HTTPSGetter
}

var _ trust.ContextHTTPSGetter = (*Collateral)(nil)

// ErrNetworkDisabled is returned for a URL that neither the bundle nor the
// cache holds when Network is off.
var ErrNetworkDisabled = errors.New("network fetch disabled")

// Get implements trust.HTTPSGetter.
func (c *Collateral) Get(u string) ([]byte, error) { return c.GetContext(context.Background(), u) }

// GetContext implements trust.ContextHTTPSGetter.
func (c *Collateral) GetContext(ctx context.Context, u string) ([]byte, error) {
	rel, err := BundlePath(u)
	if err != nil {
		return nil, err
	}
	for _, dir := range []string{c.Dir, c.CacheDir} {
		if dir == "" {
			continue
		}
		b, err := readBounded(filepath.Join(dir, rel))
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("collateral %s: %w", u, err)
		}
	}
	if !c.Network {
		return nil, fmt.Errorf("collateral %s: not in bundle %q or cache %q, and %w", u, c.Dir, c.CacheDir, ErrNetworkDisabled)
	}
	f := c.Fetch
	if f == nil {
		f = &trust.SimpleHTTPSGetter{}
	}
	b, err := trust.GetWith(ctx, f, u)
	if err != nil {
		return nil, fmt.Errorf("collateral %s: fetch: %w", u, err)
	}
	if len(b) > MaxCollateralSize {
		return nil, fmt.Errorf("collateral %s: %d bytes, at most %d", u, len(b), MaxCollateralSize)
	}
	if c.CacheDir != "" {
		if err := writeAtomic(filepath.Join(c.CacheDir, rel), b); err != nil {
			return nil, fmt.Errorf("collateral %s: cache: %w", u, err)
		}
	}
	return b, nil
}

func readBounded(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > MaxCollateralSize {
		return nil, fmt.Errorf("%s: %d bytes, at most %d", path, fi.Size(), MaxCollateralSize)
	}
	return os.ReadFile(path)
}

// writeAtomic writes b to path through a temporary file and a rename, so a
// concurrent reader sees the old file or the new one, never half of one.
func writeAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

var segmentRE = regexp.MustCompile(`^[A-Za-z0-9_.=,-]{1,200}$`)

// BundlePath maps a KDS URL to its relative path in a bundle or cache
// directory (see Collateral). It accepts only https URLs whose host and path
// segments are plain names, so no URL can name a file outside the directory.
func BundlePath(u string) (string, error) {
	p, err := url.Parse(u)
	if err != nil {
		return "", fmt.Errorf("collateral url %q: %w", u, err)
	}
	if p.Scheme != "https" || p.Host == "" || p.User != nil || p.Fragment != "" || p.Opaque != "" {
		return "", fmt.Errorf("collateral url %q: want https://host/path", u)
	}
	segs := []string{p.Host}
	for _, s := range strings.Split(strings.TrimPrefix(p.Path, "/"), "/") {
		segs = append(segs, s)
	}
	if p.RawQuery != "" {
		q, err := url.ParseQuery(p.RawQuery)
		if err != nil {
			return "", fmt.Errorf("collateral url %q: query: %w", u, err)
		}
		var kv []string
		for k, vs := range q {
			for _, v := range vs {
				kv = append(kv, k+"="+v)
			}
		}
		slices.Sort(kv)
		segs = append(segs, strings.Join(kv, ","))
	}
	for _, s := range segs {
		if !segmentRE.MatchString(s) || s == "." || s == ".." {
			return "", fmt.Errorf("collateral url %q: path segment %q not a plain name", u, s)
		}
	}
	return filepath.Join(segs...), nil
}
