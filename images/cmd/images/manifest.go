package main

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
)

// artifacts are the build outputs a manifest lists.
var artifacts = []string{"palisade.efi", "vmlinuz", "initrd.img", "cmdline", "os-release"}

func cmdKeygen(args []string) error {
	fs := flag.NewFlagSet("keygen", flag.ExitOnError)
	out := fs.String("out", "", "path prefix: writes PREFIX.pem (private, 0600) and PREFIX.pub.pem")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "images keygen --out PREFIX   (Ed25519)\nexample: images keygen --out out/image/manifest-key")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	if *out == "" {
		return errors.New("--out is required")
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	pk, _ := x509.MarshalPKCS8PrivateKey(priv)
	pb, _ := x509.MarshalPKIXPublicKey(pub)
	if err := os.WriteFile(*out+".pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(*out+".pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pb}), 0o644)
}

func loadSigner(p string) (crypto.Signer, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", p)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: %T is not a signing key", p, k)
	}
	return s, nil
}

func cmdSign(args []string) error {
	fs := flag.NewFlagSet("sign", flag.ExitOnError)
	key := fs.String("key", "", "PKCS#8 PEM private key (Ed25519 or ECDSA P-256)")
	dir := fs.String("dir", "out/image/production", "build output directory (references.json and artifacts)")
	sv := fs.Uint64("security-version", 0, "security version; must not be lower than any released before")
	version := fs.String("version", "dev", "image version")
	keyd := fs.String("keyd-references", "", "JSON list of keyd's accepted references (default: the node references)")
	out := fs.String("out", "", "bundle to write (default DIR/manifest.json)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "images sign --key K.pem --dir DIR --security-version N\nexample: images sign --key out/image/manifest-key.pem --dir out/image/production --security-version 1")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	signer, err := loadSigner(*key)
	if err != nil {
		return err
	}
	var refs []attest.Reference
	rb, err := os.ReadFile(filepath.Join(*dir, "references.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(rb, &refs); err != nil {
		return fmt.Errorf("references.json: %w", err)
	}
	keydRefs := refs
	if *keyd != "" {
		kb, err := os.ReadFile(*keyd)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(kb, &keydRefs); err != nil {
			return fmt.Errorf("%s: %w", *keyd, err)
		}
	}
	files, err := manifest.FileDigests(os.DirFS(*dir), artifacts)
	if err != nil {
		return err
	}
	m := &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: *version, SecurityVersion: *sv,
		Files: files, References: refs, Keyd: keydRefs}
	b, err := manifest.Sign(m, signer)
	if err != nil {
		return err
	}
	enc, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(*dir, "manifest.json")
	}
	fmt.Fprintf(os.Stderr, "images: signed %s (security version %d, key %s)\n", *out, *sv, b.DSSE.Signatures[0].KeyID)
	return os.WriteFile(*out, append(enc, '\n'), 0o644)
}

type multi []string

func (m *multi) String() string     { return fmt.Sprint(*m) }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func cmdVerify(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var pubs multi
	fs.Var(&pubs, "pub", "pinned PEM public key of the manifest signer (repeatable)")
	dir := fs.String("dir", "", "check every listed file's digest in this directory")
	last := fs.Uint64("last-accepted", 0, "highest security version accepted before")
	logKey := fs.String("log-key", "", "pinned PEM public key of the Rekor log: the bundle's log proof must verify with it, offline")
	noLog := fs.Bool("no-tlog", false, "accept a manifest without a transparency-log proof (test images only; reported on every run)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "images verify --pub K.pub.pem (--log-key rekor.pub.pem | --no-tlog) [--dir DIR] [--last-accepted N] BUNDLE\nexample: images verify --pub out/image/manifest-key.pub.pem --log-key rekor.pub.pem --dir out/image/production --last-accepted 2 out/image/production/manifest.dsse")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("want exactly one bundle")
	}
	if (*logKey == "") == !*noLog {
		return errors.New("want exactly one of --log-key (verify the Rekor inclusion proof) and --no-tlog")
	}
	var keys []crypto.PublicKey
	for _, p := range pubs {
		k, _, err := readPublicKey(p)
		if err != nil {
			return fmt.Errorf("--pub: %w", err)
		}
		keys = append(keys, k)
	}
	opts := manifest.Options{Keys: keys, LastAccepted: *last, AllowNoLogProof: *noLog}
	var rec *recordingLog
	if *logKey != "" {
		lk, _, err := readPublicKey(*logKey)
		if err != nil {
			return fmt.Errorf("--log-key: %w", err)
		}
		rec = &recordingLog{v: manifest.RekorVerifier{LogKey: lk, ManifestKeys: keys}}
		opts.Log = rec
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	res, err := manifest.Verify(b, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	if *dir != "" {
		if err := res.Manifest.CheckFiles(os.DirFS(*dir)); err != nil {
			return fmt.Errorf("%s: %w", *dir, err)
		}
	}
	profiles := []string{}
	for _, r := range res.Manifest.References {
		profiles = append(profiles, r.Profile)
	}
	sort.Strings(profiles)
	fmt.Fprintf(stdout, "OK image %s security version %d key %s profiles %v\n", res.Manifest.ImageVersion, res.Manifest.SecurityVersion, res.KeyID, profiles)
	if res.Log == manifest.LogVerified && rec != nil && rec.entry != nil {
		fmt.Fprintf(stdout, "transparency log: entry %d integrated %s, included in tree size %d (checkpoint %q), verified offline with the pinned log key\n",
			rec.entry.LogIndex(), rec.entry.IntegratedTime().Format(time.RFC3339), rec.entry.Checkpoint.Size, rec.entry.Checkpoint.Origin)
	} else {
		fmt.Fprintf(stdout, "WARNING: %s (--no-tlog): the manifest's presence in the transparency log was NOT checked\n", res.Log)
	}
	return nil
}

// recordingLog is the Rekor verifier keeping the entry it verified, for
// the report.
type recordingLog struct {
	v     manifest.RekorVerifier
	entry *manifest.LogEntry
}

func (r *recordingLog) VerifyLogProof(env []byte, proof json.RawMessage) error {
	e, err := r.v.Verify(env, proof)
	r.entry = e
	return err
}
