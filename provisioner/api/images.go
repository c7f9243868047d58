package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// Image is one boot image in the images directory.
type Image struct {
	Name     string    `json:"name"`
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256"`
	Modified time.Time `json:"modified"`
}

var errTooLarge = errors.New("image exceeds the size limit")

// Images is the directory the TFTP and HTTP servers serve from. Images are
// added atomically (temp file, fsync, rename, fsync of the directory) so a
// server never sends half a file.
type Images struct {
	Dir string
	// MaxSize bounds one image (default 4 GiB).
	MaxSize int64

	mu    sync.Mutex
	cache map[string]Image // by name; valid while size and mtime match
}

// NewImages returns the image store over dir, creating it.
func NewImages(dir string) (*Images, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	return &Images{Dir: dir, cache: map[string]Image{}}, nil
}

// Add copies r into the directory as name. If wantSHA256 is set the content
// must hash to it, or nothing is written.
func (im *Images) Add(name string, r io.Reader, wantSHA256 string) (Image, error) {
	if !inventory.ValidName(name) {
		return Image{}, &inventory.FieldError{Field: "name", Msg: fmt.Sprintf("%q is not a valid image file name", name)}
	}
	max := im.MaxSize
	if max <= 0 {
		max = 4 << 30
	}
	f, err := os.CreateTemp(im.Dir, ".upload-*")
	if err != nil {
		return Image{}, fmt.Errorf("images: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, max+1))
	if err == nil && n > max {
		err = fmt.Errorf("%w of %d bytes", errTooLarge, max)
	}
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Image{}, fmt.Errorf("images: write %s: %w", name, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if wantSHA256 != "" && !strings.EqualFold(wantSHA256, sum) {
		return Image{}, &inventory.FieldError{Field: "sha256", Msg: fmt.Sprintf("content hashes to %s, not %s", sum, wantSHA256)}
	}
	final := filepath.Join(im.Dir, name)
	if err := os.Rename(tmp, final); err != nil {
		return Image{}, fmt.Errorf("images: %w", err)
	}
	if d, err := os.Open(im.Dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return Image{}, fmt.Errorf("images: sync directory: %w", err)
		}
	}
	st, err := os.Stat(final)
	if err != nil {
		return Image{}, fmt.Errorf("images: %w", err)
	}
	img := Image{Name: name, Size: n, SHA256: sum, Modified: st.ModTime().UTC()}
	im.mu.Lock()
	if im.cache == nil {
		im.cache = map[string]Image{}
	}
	im.cache[name] = img
	im.mu.Unlock()
	return img, nil
}

// List returns the regular files of the directory with their SHA-256,
// hashing only files changed since they were last hashed.
func (im *Images) List() ([]Image, error) {
	ents, err := os.ReadDir(im.Dir)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	var out []Image
	for _, e := range ents {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		im.mu.Lock()
		c, ok := im.cache[e.Name()]
		im.mu.Unlock()
		if !ok || c.Size != info.Size() || !c.Modified.Equal(info.ModTime().UTC()) {
			sum, err := hashFile(filepath.Join(im.Dir, e.Name()))
			if err != nil {
				return nil, fmt.Errorf("images: %w", err)
			}
			c = Image{Name: e.Name(), Size: info.Size(), SHA256: sum, Modified: info.ModTime().UTC()}
			im.mu.Lock()
			if im.cache == nil {
				im.cache = map[string]Image{}
			}
			im.cache[e.Name()] = c
			im.mu.Unlock()
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
