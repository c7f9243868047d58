package tdx_test

import (
	"io/fs"
	"os"
)

func writeFile(p string, b []byte) error { return os.WriteFile(p, b, 0o600) }

func osDirFS(dir string) fs.FS { return os.DirFS(dir) }
