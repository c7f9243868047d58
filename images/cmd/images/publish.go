package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"time"

	"github.com/go-openapi/runtime"
	httptransport "github.com/go-openapi/runtime/client"
	"github.com/go-openapi/strfmt"
	rekorclient "github.com/sigstore/rekor/pkg/generated/client"
	"github.com/sigstore/rekor/pkg/generated/client/entries"
	"github.com/sigstore/rekor/pkg/generated/models"

	"github.com/palisade-cc/palisade/internal/manifest"
)

// publisher records a signed manifest in a Rekor log and returns the bundle
// with its log proof, verified offline against the pinned log key before it
// is handed out: a proof that does not verify is an error, never written.
type publisher struct {
	// URL is the Rekor server, e.g. https://rekor.example.
	URL string
	// HTTP is the client; nil means one with Timeout per request.
	HTTP *http.Client
	// LogKey is the pinned Rekor public key.
	LogKey crypto.PublicKey
	// ManifestKey and ManifestKeyPEM are the manifest signing key's public
	// part: Rekor checks the envelope's signature with it, and the verifier
	// requires the logged entry to carry it.
	ManifestKey    crypto.PublicKey
	ManifestKeyPEM []byte
	// Wait bounds the wait for the inclusion proof.
	Wait time.Duration
	// Progress receives one line per step.
	Progress io.Writer
}

func (p *publisher) client() (*rekorclient.Rekor, error) {
	u, err := url.Parse(p.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--rekor %q: want an http(s) URL", p.URL)
	}
	base := u.Path
	if base == "" || base == "/" {
		base = rekorclient.DefaultBasePath
	}
	hc := p.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	rt := httptransport.NewWithClient(u.Host, base, []string{u.Scheme}, hc)
	rt.Consumers["application/json"] = runtime.JSONConsumer()
	rt.Producers["application/json"] = runtime.JSONProducer()
	return rekorclient.New(rt, strfmt.Default), nil
}

// publish logs b's envelope and returns b with its verified log proof.
func (p *publisher) publish(ctx context.Context, b *manifest.Bundle) (*manifest.Bundle, *manifest.LogEntry, error) {
	c, err := p.client()
	if err != nil {
		return nil, nil, err
	}
	env, err := manifest.EnvelopeBytes(b)
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(env)
	fmt.Fprintf(p.Progress, "images: publishing envelope sha256:%s to %s as a %s/%s entry\n",
		hex.EncodeToString(sum[:]), p.URL, manifest.RekorEntryKind, manifest.RekorEntryVersion)
	params := entries.NewCreateLogEntryParamsWithContext(ctx).WithProposedEntry(manifest.RekorProposedEntry(env, p.ManifestKeyPEM))
	var uuid string
	var got *models.LogEntryAnon
	created, err := c.Entries.CreateLogEntry(params)
	var conflict *entries.CreateLogEntryConflict
	switch {
	case errors.As(err, &conflict):
		// Already logged (a rerun): Rekor says where; fetch it.
		uuid = path.Base(conflict.Location.String())
		fmt.Fprintf(p.Progress, "images: the log already holds this envelope as %s\n", uuid)
	case err != nil:
		return nil, nil, fmt.Errorf("rekor %s: create entry: %w", p.URL, err)
	default:
		uuid, got, err = single(created.Payload)
		if err != nil {
			return nil, nil, fmt.Errorf("rekor %s: create entry: %w", p.URL, err)
		}
		fmt.Fprintf(p.Progress, "images: logged as %s at index %d, integrated %s\n", uuid, *got.LogIndex,
			time.Unix(*got.IntegratedTime, 0).UTC().Format(time.RFC3339))
	}
	// A log may answer before the entry is in a signed tree; poll for the
	// inclusion proof until Wait.
	deadline := time.Now().Add(p.Wait)
	for got == nil || got.Verification == nil || got.Verification.InclusionProof == nil {
		if got != nil {
			if time.Now().After(deadline) {
				return nil, nil, fmt.Errorf("rekor %s: entry %s has no inclusion proof after %s", p.URL, uuid, p.Wait)
			}
			fmt.Fprintf(p.Progress, "images: waiting for the inclusion proof of %s\n", uuid)
			select {
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			case <-time.After(time.Second):
			}
		}
		r, err := c.Entries.GetLogEntryByUUID(entries.NewGetLogEntryByUUIDParamsWithContext(ctx).WithEntryUUID(uuid))
		if err != nil {
			return nil, nil, fmt.Errorf("rekor %s: get entry %s: %w", p.URL, uuid, err)
		}
		if _, got, err = single(r.Payload); err != nil {
			return nil, nil, fmt.Errorf("rekor %s: get entry %s: %w", p.URL, uuid, err)
		}
	}
	proof, err := json.Marshal(got)
	if err != nil {
		return nil, nil, err
	}
	v := &manifest.RekorVerifier{LogKey: p.LogKey, ManifestKeys: []crypto.PublicKey{p.ManifestKey}}
	e, err := v.Verify(env, proof)
	if err != nil {
		return nil, nil, fmt.Errorf("rekor %s: the log's proof for %s does not verify against the pinned log key: %w", p.URL, uuid, err)
	}
	fmt.Fprintf(p.Progress, "images: inclusion proof verified offline: index %d of tree size %d, checkpoint %q, signed by the pinned log key\n",
		*got.Verification.InclusionProof.LogIndex, *got.Verification.InclusionProof.TreeSize, e.Checkpoint.Origin)
	out := *b
	out.LogProof = proof
	return &out, e, nil
}

// single returns the one entry of a Rekor LogEntry map.
func single(m models.LogEntry) (string, *models.LogEntryAnon, error) {
	if len(m) != 1 {
		return "", nil, fmt.Errorf("%d entries in the answer, want 1", len(m))
	}
	for k, v := range m {
		v := v
		return k, &v, nil
	}
	panic("unreachable")
}

func readPublicKey(p string) (crypto.PublicKey, []byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, nil, err
	}
	k, err := manifest.ParsePublicKey(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	return k, b, nil
}

func cmdPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rekor := fs.String("rekor", "", "Rekor server URL (required)")
	logKey := fs.String("log-key", "", "the Rekor log's pinned PEM public key (required): the returned proof must verify with it")
	pub := fs.String("pub", "", "the manifest signing key's PEM public key (required): Rekor verifies the envelope with it")
	out := fs.String("out", "", "bundle to write (default: rewrite BUNDLE in place)")
	wait := fs.Duration("wait", time.Minute, "how long to wait for the inclusion proof")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "images publish --rekor URL --log-key rekor.pub.pem --pub K.pub.pem [--out OUT] BUNDLE\nexample: images publish --rekor https://rekor.example --log-key rekor.pub.pem --pub out/image/manifest-key.pub.pem out/image/production/manifest.dsse")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *rekor == "" || *logKey == "" || *pub == "" {
		fs.Usage()
		return errors.New("want --rekor, --log-key, --pub and exactly one bundle")
	}
	lk, _, err := readPublicKey(*logKey)
	if err != nil {
		return fmt.Errorf("--log-key: %w", err)
	}
	mk, mkPEM, err := readPublicKey(*pub)
	if err != nil {
		return fmt.Errorf("--pub: %w", err)
	}
	p := &publisher{URL: *rekor, LogKey: lk, ManifestKey: mk, ManifestKeyPEM: mkPEM, Wait: *wait, Progress: stderr}
	dst := *out
	if dst == "" {
		dst = fs.Arg(0)
	}
	if err := p.publishFile(ctx, fs.Arg(0), dst); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "published %s with its log proof\n", dst)
	return nil
}

// publishFile publishes the bundle at src and writes it with its proof to dst.
func (p *publisher) publishFile(ctx context.Context, src, dst string) error {
	raw, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	// The bundle must already verify with the manifest key: publishing a
	// manifest nobody can accept only pollutes the log.
	if _, err := manifest.Verify(raw, manifest.Options{Keys: []crypto.PublicKey{p.ManifestKey}, AllowNoLogProof: true}); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	var b manifest.Bundle
	if err := json.Unmarshal(raw, &b); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	nb, _, err := p.publish(ctx, &b)
	if err != nil {
		return err
	}
	enc, err := json.MarshalIndent(nb, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(dst, append(enc, '\n'))
}

// writeFileAtomic replaces dst only once the new content is complete.
func writeFileAtomic(dst string, b []byte) error {
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
