// Command images builds Palisade's measured image, signs its manifest,
// records it in a Rekor transparency log and verifies it.
//
//	images build --profile production [--version v1] [--manifest-key pub.pem] [--firmware DIR [--snp-product Milan] [--tdx-boots boots.json]]
//	images keygen --out key            (writes key.pem and key.pub.pem)
//	images sign --key key.pem --dir out/image/production --security-version 3 --out manifest.dsse
//	images publish --rekor https://rekor.example --log-key rekor.pub.pem --pub key.pub.pem manifest.dsse
//	images verify --pub key.pub.pem --log-key rekor.pub.pem --dir out/image/production --last-accepted 2 manifest.dsse
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/palisade-cc/palisade/images/build"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	switch os.Args[1] {
	case "build":
		err = cmdBuild(ctx, os.Args[2:])
	case "keygen":
		err = cmdKeygen(os.Args[2:])
	case "sign":
		err = cmdSign(os.Args[2:])
	case "verify":
		err = cmdVerify(os.Args[2:], os.Stdout, os.Stderr)
	case "publish":
		err = cmdPublish(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "firmware-profile":
		err = cmdFirmwareProfile(os.Args[2:], os.Stdout)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "images %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: images build|keygen|sign|publish|verify|firmware-profile [flags]

  images build --profile production --out out/image
  images keygen --out out/image/manifest-key
  images sign --key out/image/manifest-key.pem --dir out/image/production --security-version 1 --out out/image/production/manifest.dsse
  images publish --rekor https://rekor.example --log-key rekor.pub.pem --pub out/image/manifest-key.pub.pem out/image/production/manifest.dsse
  images verify --pub out/image/manifest-key.pub.pem --log-key rekor.pub.pem --dir out/image/production --last-accepted 0 out/image/production/manifest.dsse
  verifier node --json 10.0.0.7:7444 > ref-boot.json && images firmware-profile --name rack-a ref-boot.json > tpm-firmware.json
  images build --profile production --tpm-firmware tpm-firmware.json

Run "images <command> --help" for the flags.
`)
	os.Exit(2)
}

func cmdBuild(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	profile := fs.String("profile", "production", "production, control-plane (production plus keyd, for the first control-plane node) or debug")
	version := fs.String("version", "dev", "image version written into .osrel and the manifest")
	out := fs.String("out", "out/image", "output directory")
	cache := fs.String("cache", "out/image/cache", "download cache (kernel .deb)")
	root := fs.String("root", ".", "repository root to build the Go commands from")
	key := fs.String("manifest-key", "", "PEM public key compiled into the image to verify manifests")
	fw := fs.String("firmware", "", "pinned firmware directory (the last line scripts/firmware.sh prints): adds sev-snp and tdx references")
	product := fs.String("snp-product", "Milan", "AMD product line whose roots sign the sev-snp nodes' reports (Milan, Genoa, Turin)")
	smt := fs.Bool("snp-smt", false, "sev-snp references accept a guest policy and platform with SMT enabled")
	rootsDir := fs.String("roots", "", "directory with roots.json (internal/roots) and the files it names, pinned into the image for attestd to judge keyd")
	rekorKey := fs.String("rekor-key", "", "the Rekor log's PEM public key compiled into the image: attestd requires the manifest's inclusion proof")
	noLogProof := fs.Bool("manifest-without-log-proof", false, "attestd accepts a signed manifest without a transparency-log proof (until the log exists)")
	tpmFW := fs.String("tpm-firmware", "", "JSON list of TPM firmware profiles (images firmware-profile): TPM references then pin PCR 0-3, 5-7 of each")
	boots := fs.String("tdx-boots", "", "JSON list of {shape, secure_boot, reference} recorded from TDX reference boots (rtmr[0], td_attributes, xfam, min_tee_tcb_svn); without it no tdx references")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "images build --profile production|control-plane|debug [--version v] [--manifest-key pub.pem] [--rekor-key rekor.pub.pem | --manifest-without-log-proof] [--roots DIR] [--firmware DIR]\nexample: SOURCE_DATE_EPOCH=1700000000 images build --profile production --firmware \"$(scripts/firmware.sh | tail -n1)\"")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	epoch := int64(0)
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
		}
		epoch = v
	}
	var kb []byte
	if *key != "" {
		var err error
		if kb, err = os.ReadFile(*key); err != nil {
			return err
		}
	}
	var rb []byte
	if *rekorKey != "" {
		var err error
		if rb, err = os.ReadFile(*rekorKey); err != nil {
			return err
		}
	}
	opts := build.Options{Profile: *profile, Version: *version, Epoch: epoch, Root: *root,
		Out: *out, Cache: *cache, ManifestKey: kb, RekorKey: rb, Log: os.Stderr,
		SNP:   attest.SNPReference{Product: *product, SMT: *smt},
		Roots: *rootsDir, ManifestWithoutLogProof: *noLogProof}
	if *tpmFW != "" {
		f, err := build.LoadTPMFirmware(*tpmFW)
		if err != nil {
			return fmt.Errorf("--tpm-firmware: %w", err)
		}
		opts.TPMFirmware = f
	}
	if *fw != "" {
		f, err := reference.LoadFirmware(*fw)
		if err != nil {
			return fmt.Errorf("--firmware: %w", err)
		}
		opts.Firmware = f
	} else if *boots != "" {
		return fmt.Errorf("--tdx-boots needs --firmware")
	}
	if *boots != "" {
		b, err := reference.LoadTDXBoots(*boots)
		if err != nil {
			return fmt.Errorf("--tdx-boots: %w", err)
		}
		opts.TDXBoots = b
	}
	start := time.Now()
	_, err := build.Build(ctx, opts)
	fmt.Fprintf(os.Stderr, "images: build took %s\n", time.Since(start).Round(100*time.Millisecond))
	return err
}
