// Command images builds Palisade's measured image and signs and verifies its
// manifest.
//
//	images build --profile production [--version v1] [--manifest-key pub.pem]
//	images keygen --out key            (writes key.pem and key.pub.pem)
//	images sign --key key.pem --dir out/image/production --security-version 3 --out manifest.dsse
//	images verify --pub key.pub.pem --dir out/image/production --last-accepted 2 --no-tlog manifest.dsse
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
		err = cmdVerify(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "images %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: images build|keygen|sign|verify [flags]

  images build --profile production --out out/image
  images keygen --out out/image/manifest-key
  images sign --key out/image/manifest-key.pem --dir out/image/production --security-version 1 --out out/image/production/manifest.dsse
  images verify --pub out/image/manifest-key.pub.pem --dir out/image/production --last-accepted 0 --no-tlog out/image/production/manifest.dsse

Run "images <command> --help" for the flags.
`)
	os.Exit(2)
}

func cmdBuild(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	profile := fs.String("profile", "production", "production or debug")
	version := fs.String("version", "dev", "image version written into .osrel and the manifest")
	out := fs.String("out", "out/image", "output directory")
	cache := fs.String("cache", "out/image/cache", "download cache (kernel .deb)")
	root := fs.String("root", ".", "repository root to build the Go commands from")
	key := fs.String("manifest-key", "", "PEM public key compiled into the image to verify manifests")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "images build --profile production|debug [--version v] [--manifest-key pub.pem]\nexample: SOURCE_DATE_EPOCH=1700000000 images build --profile production")
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
	start := time.Now()
	_, err := build.Build(ctx, build.Options{Profile: *profile, Version: *version, Epoch: epoch, Root: *root,
		Out: *out, Cache: *cache, ManifestKey: kb, Log: os.Stderr})
	fmt.Fprintf(os.Stderr, "images: build took %s\n", time.Since(start).Round(100*time.Millisecond))
	return err
}
