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
	"os"
	"path/filepath"
	"sort"

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

func cmdVerify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ExitOnError)
	var pubs multi
	fs.Var(&pubs, "pub", "pinned PEM public key (repeatable)")
	dir := fs.String("dir", "", "check every listed file's digest in this directory")
	last := fs.Uint64("last-accepted", 0, "highest security version accepted before")
	noLog := fs.Bool("no-tlog", false, "accept a manifest without a transparency-log proof (reported, until Rekor lands)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "images verify --pub K.pub.pem [--dir DIR] [--last-accepted N] [--no-tlog] BUNDLE\nexample: images verify --pub out/image/manifest-key.pub.pem --dir out/image/production --no-tlog out/image/production/manifest.json")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("want exactly one bundle")
	}
	var keys []crypto.PublicKey
	for _, p := range pubs {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		k, err := manifest.ParsePublicKey(b)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		keys = append(keys, k)
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	// No Rekor verifier exists yet: without --no-tlog this fails with
	// "no transparency-log proof", as it must.
	res, err := manifest.Verify(b, manifest.Options{Keys: keys, LastAccepted: *last, AllowNoLogProof: *noLog})
	if err != nil {
		return err
	}
	if *dir != "" {
		if err := res.Manifest.CheckFiles(os.DirFS(*dir)); err != nil {
			return err
		}
	}
	profiles := []string{}
	for _, r := range res.Manifest.References {
		profiles = append(profiles, r.Profile)
	}
	sort.Strings(profiles)
	fmt.Printf("OK image %s security version %d key %s profiles %v\n", res.Manifest.ImageVersion, res.Manifest.SecurityVersion, res.KeyID, profiles)
	if res.Log != manifest.LogVerified {
		fmt.Printf("WARNING: %s\n", res.Log)
	}
	return nil
}
