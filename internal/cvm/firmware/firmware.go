// Package firmware pins the confidential-VM firmware Palisade measures: OVMF's
// AmdSev build and TDVF, built by scripts/firmware.sh from Debian's edk2 source.
//
// It finds and checks the built files; it does not build them (the script
// does) nor compute launch measurements (internal/cvm does).
package firmware

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// Source is the Debian source package the firmware is built from, and the
// sha256 of its .dsc (which pins the tarballs by their own sha256).
const (
	SourceVersion   = "edk2 2022.11-6+deb12u2"
	SourceDSCSHA256 = "3129d783c9017f738af4453c9f94a2fdfba2ee91cf409c0c3623b31377e76cc6"
)

// Build is one firmware file of the pinned build.
type Build struct {
	// File is the name in the output directory.
	File string
	// SHA256 is the digest of a bit-identical rebuild, hex.
	SHA256 string
	// Platform says what it launches.
	Platform string
}

// Pinned are the files scripts/firmware.sh produces, with the digests two
// builds at the fixed path /tmp/palisade-edk2-build produced.
var Pinned = []Build{
	{File: "OVMF.amdsev.fd", SHA256: "ad5d275b57d12e66ee2d70bce206420919260197cc672e739cfa7c4388749560", Platform: "sev-snp"},
	{File: "OVMF.inteltdx.fd", SHA256: "ac021a04ec40122c54a0d7d3e1215434a7ad8c85346597dad6a96c998f2a05c1", Platform: "tdx"},
}

// Load reads a pinned firmware file from dir (the directory
// scripts/firmware.sh prints) and checks its digest.
func Load(dir, platform string) ([]byte, error) {
	for _, p := range Pinned {
		if p.Platform != platform {
			continue
		}
		name := filepath.Join(dir, p.File)
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("firmware %s: %w (run scripts/firmware.sh)", platform, err)
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != p.SHA256 {
			return nil, fmt.Errorf("firmware %s: %s has sha256 %s, the pinned build has %s", platform, name, got, p.SHA256)
		}
		return b, nil
	}
	return nil, fmt.Errorf("firmware: no pinned build for platform %q (want sev-snp or tdx)", platform)
}
