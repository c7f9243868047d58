// Package api is the provisioner's versioned HTTP JSON API (/api/v1/…) with
// bearer-token auth, and its Go client; it is not the UI nor a trust decision.
package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// Prefix is where the API lives; the version is part of the path so a later
// v2 can be served beside it.
const Prefix = "/api/v1/"

// Role is what a token may do.
type Role string

// Roles.
const (
	RoleAdmin    Role = "admin"
	RoleReadOnly Role = "read-only"
)

// Options configure a Server.
type Options struct {
	// AdminToken may look and change; ReadOnlyToken may only look. Empty
	// tokens never match. Secrets: never logged.
	AdminToken, ReadOnlyToken string
	// Images holds the boot images (the TFTP and HTTP root).
	Images *Images
	Logger *slog.Logger
}

// Server serves the API over an inventory.
type Server struct {
	inv    *inventory.Store
	images *Images
	log    *slog.Logger
	admin  [32]byte
	read   [32]byte
	hasA   bool
	hasR   bool
	mux    *http.ServeMux
}

// New returns the API server. At least the admin token must be set.
func New(inv *inventory.Store, opts Options) (*Server, error) {
	if opts.AdminToken == "" {
		return nil, errors.New("api: admin token is empty")
	}
	if opts.AdminToken == opts.ReadOnlyToken {
		return nil, errors.New("api: admin and read-only tokens are the same")
	}
	if opts.Images == nil {
		return nil, errors.New("api: no images directory")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{inv: inv, images: opts.Images, log: opts.Logger, mux: http.NewServeMux()}
	// Tokens are compared as SHA-256 digests in constant time, so neither
	// the length nor a prefix of a token leaks through timing.
	s.admin, s.hasA = sha256.Sum256([]byte(opts.AdminToken)), true
	if opts.ReadOnlyToken != "" {
		s.read, s.hasR = sha256.Sum256([]byte(opts.ReadOnlyToken)), true
	}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /api/v1/whoami", s.whoami)
	m.HandleFunc("GET /api/v1/machines", s.listMachines)
	m.HandleFunc("GET /api/v1/machines/{mac}", s.showMachine)
	m.HandleFunc("GET /api/v1/machines/{mac}/events", s.timeline)
	m.HandleFunc("POST /api/v1/machines/{mac}/accept", s.accept)
	m.HandleFunc("POST /api/v1/machines/{mac}/assign", s.assign)
	m.HandleFunc("POST /api/v1/machines/{mac}/state", s.report)
	m.HandleFunc("DELETE /api/v1/machines/{mac}", s.forget)
	m.HandleFunc("GET /api/v1/profiles", s.listProfiles)
	m.HandleFunc("GET /api/v1/profiles/{name}", s.showProfile)
	m.HandleFunc("PUT /api/v1/profiles/{name}", s.putProfile)
	m.HandleFunc("DELETE /api/v1/profiles/{name}", s.deleteProfile)
	m.HandleFunc("GET /api/v1/images", s.listImages)
	m.HandleFunc("PUT /api/v1/images/{name}", s.addImage)
	m.HandleFunc("GET /api/v1/events", s.events)
	m.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
}

// ServeHTTP authenticates, then routes. GET and HEAD need any valid token,
// everything else the admin token: 401 without a valid token, 403 with a
// read-only token on a change.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	role, ok := s.authenticate(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="provisioner"`)
		writeErr(w, http.StatusUnauthorized, "", "missing or invalid bearer token")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && role != RoleAdmin {
		writeErr(w, http.StatusForbidden, "", "the read-only token may not change anything")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	s.mux.ServeHTTP(w, r.WithContext(withRole(r.Context(), role)))
}

func (s *Server) authenticate(r *http.Request) (Role, bool) {
	h := r.Header.Get("Authorization")
	const p = "Bearer "
	if len(h) <= len(p) || !strings.EqualFold(h[:len(p)], p) {
		return "", false
	}
	d := sha256.Sum256([]byte(strings.TrimSpace(h[len(p):])))
	// Compare against both, always, so timing does not tell which matched.
	a := subtle.ConstantTimeCompare(d[:], s.admin[:]) == 1 && s.hasA
	ro := subtle.ConstantTimeCompare(d[:], s.read[:]) == 1 && s.hasR
	switch {
	case a:
		return RoleAdmin, true
	case ro:
		return RoleReadOnly, true
	}
	return "", false
}

// Error is the body of every non-2xx answer.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	// Field names the bad input field, when one is to blame.
	Field string `json:"field,omitempty"`
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s (field %s, HTTP %d)", e.Message, e.Field, e.Status)
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, status int, field, msg string) {
	writeJSON(w, status, &Error{Message: msg, Field: field})
}

// fail maps an inventory error to a status.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var fe *inventory.FieldError
	switch {
	case errors.As(err, &fe):
		writeErr(w, http.StatusBadRequest, fe.Field, fe.Msg)
	case errors.Is(err, inventory.ErrNotFound):
		writeErr(w, http.StatusNotFound, "", err.Error())
	case errors.Is(err, inventory.ErrConflict):
		writeErr(w, http.StatusConflict, "", err.Error())
	default:
		s.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeErr(w, http.StatusInternalServerError, "", "internal error")
	}
}

// decode reads a JSON body of at most 1 MiB with no unknown fields; the
// error names the offending field where encoding/json says which.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err == nil {
		return true
	}
	var te *json.UnmarshalTypeError
	field := ""
	switch {
	case errors.As(err, &te):
		field = te.Field
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field = strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
	}
	writeErr(w, http.StatusBadRequest, field, "bad JSON body: "+err.Error())
	return false
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]Role{"role": roleOf(r.Context())})
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) {
	ms, err := s.inv.Machines()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if st := r.URL.Query().Get("state"); st != "" {
		keep := ms[:0]
		for _, m := range ms {
			if string(m.State) == st {
				keep = append(keep, m)
			}
		}
		ms = keep
	}
	writeJSON(w, http.StatusOK, nonNil(ms))
}

func (s *Server) showMachine(w http.ResponseWriter, r *http.Request) {
	m, err := s.inv.Machine(r.PathValue("mac"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) timeline(w http.ResponseWriter, r *http.Request) {
	ev, err := s.inv.Timeline(r.PathValue("mac"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(ev))
}

// AcceptRequest is the optional body of accept.
type AcceptRequest struct {
	Profile string `json:"profile,omitempty"`
}

// AssignRequest is the body of assign.
type AssignRequest struct {
	Profile string `json:"profile"`
}

// ReportRequest is the body of a state report from the cluster.
type ReportRequest struct {
	State  inventory.State `json:"state"`
	Detail string          `json:"detail,omitempty"`
}

func (s *Server) accept(w http.ResponseWriter, r *http.Request) {
	var req AcceptRequest
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	m, err := s.inv.Accept(r.PathValue("mac"), req.Profile, "api:"+string(roleOf(r.Context())))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("machine accepted", "mac", m.MAC, "profile", m.Profile)
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) assign(w http.ResponseWriter, r *http.Request) {
	var req AssignRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Profile == "" {
		writeErr(w, http.StatusBadRequest, "profile", "required")
		return
	}
	m, err := s.inv.Assign(r.PathValue("mac"), req.Profile)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("profile assigned", "mac", m.MAC, "profile", m.Profile)
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) report(w http.ResponseWriter, r *http.Request) {
	var req ReportRequest
	if !decode(w, r, &req) {
		return
	}
	m, err := s.inv.Report(r.PathValue("mac"), req.State, req.Detail)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) forget(w http.ResponseWriter, r *http.Request) {
	if err := s.inv.Forget(r.PathValue("mac")); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listProfiles(w http.ResponseWriter, r *http.Request) {
	ps, err := s.inv.Profiles()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(ps))
}

func (s *Server) showProfile(w http.ResponseWriter, r *http.Request) {
	p, err := s.inv.Profile(r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) putProfile(w http.ResponseWriter, r *http.Request) {
	var p inventory.Profile
	if !decode(w, r, &p) {
		return
	}
	name := r.PathValue("name")
	if p.Name == "" {
		p.Name = name
	}
	if p.Name != name {
		writeErr(w, http.StatusBadRequest, "name", fmt.Sprintf("%q differs from the name in the path %q", p.Name, name))
		return
	}
	if err := s.inv.PutProfile(p); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) deleteProfile(w http.ResponseWriter, r *http.Request) {
	if err := s.inv.DeleteProfile(r.PathValue("name")); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	l, err := s.images.List()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(l))
}

func (s *Server) addImage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !inventory.ValidName(name) {
		writeErr(w, http.StatusBadRequest, "name", fmt.Sprintf("%q is not a valid image file name (letters, digits, . _ -)", name))
		return
	}
	want := strings.ToLower(r.Header.Get("X-Content-SHA256"))
	img, err := s.images.Add(name, r.Body, want)
	if err != nil {
		var fe *inventory.FieldError
		if errors.As(err, &fe) {
			writeErr(w, http.StatusBadRequest, fe.Field, fe.Msg)
			return
		}
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) || errors.Is(err, errTooLarge) {
			writeErr(w, http.StatusRequestEntityTooLarge, "", err.Error())
			return
		}
		s.fail(w, r, err)
		return
	}
	s.log.Info("image added", "name", img.Name, "sha256", img.SHA256, "bytes", img.Size)
	writeJSON(w, http.StatusCreated, img)
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, limit := uint64(0), 1000
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeErr(w, http.StatusBadRequest, "after", "not a sequence number")
			return
		}
		after = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeErr(w, http.StatusBadRequest, "limit", "must be 1 to 10000")
			return
		}
		limit = n
	}
	ev, err := s.inv.Events(after, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(ev))
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
