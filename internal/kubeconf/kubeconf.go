// Package kubeconf writes the kubeadm configuration files of a Palisade
// node: the first control-plane node's InitConfiguration and
// ClusterConfiguration, and a joining node's JoinConfiguration, built from
// kubeadm's own v1beta4 types and checked by kubeadm's own validation before
// they are returned.
//
// It is not a client of the cluster: it neither creates tokens (keyd/kube
// does) nor runs kubeadm. Its inputs are the cluster's settings and the join
// material keyd released to an attested node.
package kubeconf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm"
	kubeadmscheme "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme"
	"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/v1beta4"
	"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/validation"
	kubeadmutil "k8s.io/kubernetes/cmd/kubeadm/app/util"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// Defaults used when a Cluster or Node field is empty.
const (
	// DefaultKubernetesVersion is the version the project pins
	// (go.mod's k8s.io/kubernetes, tools/k8s).
	DefaultKubernetesVersion = "v1.37.2"
	// DefaultCRISocket is containerd's socket, kubeadm's own default on
	// Linux (cmd/kubeadm/app/constants: CRISocketContainerd).
	DefaultCRISocket = "unix:///var/run/containerd/containerd.sock"
	// DefaultBindPort is kube-apiserver's secure port in kubeadm.
	DefaultBindPort = 6443
	// SkippedInitPhase is the kubeadm init phase the first control-plane
	// node skips (see InitConfig).
	SkippedInitPhase = "bootstrap-token"
)

// Cluster holds the cluster-wide settings, the same for every node.
type Cluster struct {
	// Name is kubeadm's clusterName (default "kubernetes").
	Name string
	// KubernetesVersion, e.g. "v1.37.2" (default DefaultKubernetesVersion).
	KubernetesVersion string
	// ControlPlaneEndpoint is the API server's host:port every node dials:
	// a mesh address of a control-plane node, or a name resolving to them.
	ControlPlaneEndpoint string
	// PodSubnet and ServiceSubnet are CIDRs; ServiceSubnet defaults to
	// kubeadm's 10.96.0.0/12, PodSubnet is required (the mesh routes it).
	PodSubnet     string
	ServiceSubnet string
	// DNSDomain defaults to kubeadm's cluster.local.
	DNSDomain string
}

// Node is one node's own settings.
type Node struct {
	// Name is the Kubernetes node name (a DNS-1123 subdomain).
	Name string
	// MeshAddress is the node's address on Palisade's WireGuard mesh: the
	// kubelet's node IP, and a control-plane node's advertise address, so
	// that cluster traffic never leaves the attested mesh.
	MeshAddress netip.Addr
	// CRISocket defaults to DefaultCRISocket.
	CRISocket string
}

// Join is the material keyd releases to an admitted node (keyd/api.KubeJoin).
type Join struct {
	// APIServerEndpoint is host:port of the API server used for discovery;
	// empty means the cluster's ControlPlaneEndpoint.
	APIServerEndpoint string
	// Token is the bootstrap token, "[a-z0-9]{6}.[a-z0-9]{16}".
	Token string
	// CACertHashes pin the cluster CA: "sha256:<hex of the SPKI>".
	CACertHashes []string
	// CertificateKey is set for control-plane joiners only: the hex AES key
	// that decrypts the kubeadm-certs Secret.
	CertificateKey string
}

// InitConfig returns the first control-plane node's InitConfiguration and
// ClusterConfiguration (kubeadm v1beta4), checked by kubeadm's validation.
// It carries no bootstrap token: keyd issues one per admitted node.
func InitConfig(c Cluster, n Node) (*v1beta4.InitConfiguration, *v1beta4.ClusterConfiguration, error) {
	c = c.withDefaults()
	n = n.withDefaults()
	if err := c.check(); err != nil {
		return nil, nil, err
	}
	if err := n.check(); err != nil {
		return nil, nil, err
	}
	host, _, _ := net.SplitHostPort(c.ControlPlaneEndpoint)
	init := &v1beta4.InitConfiguration{
		TypeMeta:         typeMeta("InitConfiguration"),
		NodeRegistration: n.registration(),
		LocalAPIEndpoint: v1beta4.APIEndpoint{
			AdvertiseAddress: n.MeshAddress.String(),
			BindPort:         DefaultBindPort,
		},
		// kubeadm's bootstrap-token phase would create a token that lives
		// 24 h and can join any node: exactly what Palisade replaces with
		// keyd's per-node, minutes-long tokens. kubeadm defaults an empty
		// BootstrapTokens list to one such token, so the phase is skipped
		// and keyd/kube's Setup does the rest of its work (cluster-info,
		// the bootstrappers' RBAC).
		SkipPhases: []string{SkippedInitPhase},
	}
	cluster := &v1beta4.ClusterConfiguration{
		TypeMeta:             typeMeta("ClusterConfiguration"),
		ClusterName:          c.Name,
		KubernetesVersion:    c.KubernetesVersion,
		ControlPlaneEndpoint: c.ControlPlaneEndpoint,
		Networking: v1beta4.Networking{
			PodSubnet:     c.PodSubnet,
			ServiceSubnet: c.ServiceSubnet,
			DNSDomain:     c.DNSDomain,
		},
		APIServer: v1beta4.APIServer{
			// The serving certificate must name the endpoint nodes dial
			// and this node's mesh address.
			CertSANs: uniq(host, n.MeshAddress.String()),
		},
	}
	kubeadmscheme.Scheme.Default(init)
	kubeadmscheme.Scheme.Default(cluster)
	// Defaulting added a token without a value (kubeadm fills it at run
	// time); it is never created since its phase is skipped, and it stays
	// out of the file.
	init.BootstrapTokens = nil
	if _, err := ValidateInit(init, cluster); err != nil {
		return nil, nil, err
	}
	return init, cluster, nil
}

// JoinConfig returns a node's JoinConfiguration (kubeadm v1beta4) for the
// join material j: discovery by bootstrap token with the CA pinned by hash,
// the same token for the kubelet's TLS bootstrap, and, when j carries a
// certificate key, the control-plane section.
func JoinConfig(c Cluster, n Node, j Join) (*v1beta4.JoinConfiguration, error) {
	c = c.withDefaults()
	n = n.withDefaults()
	if err := n.check(); err != nil {
		return nil, err
	}
	endpoint := j.APIServerEndpoint
	if endpoint == "" {
		endpoint = c.ControlPlaneEndpoint
	}
	join := &v1beta4.JoinConfiguration{
		TypeMeta:         typeMeta("JoinConfiguration"),
		NodeRegistration: n.registration(),
		Discovery: v1beta4.Discovery{
			BootstrapToken: &v1beta4.BootstrapTokenDiscovery{
				Token:             j.Token,
				APIServerEndpoint: endpoint,
				CACertHashes:      append([]string(nil), j.CACertHashes...),
			},
			TLSBootstrapToken: j.Token,
		},
	}
	if j.CertificateKey != "" {
		join.ControlPlane = &v1beta4.JoinControlPlane{
			LocalAPIEndpoint: v1beta4.APIEndpoint{
				AdvertiseAddress: n.MeshAddress.String(),
				BindPort:         DefaultBindPort,
			},
			CertificateKey: j.CertificateKey,
		}
	}
	kubeadmscheme.Scheme.Default(join)
	if _, err := ValidateJoin(join); err != nil {
		return nil, err
	}
	return join, nil
}

// Marshal serialises kubeadm objects as kubeadm reads them: YAML documents
// with apiVersion and kind, separated by "---".
func Marshal(objs ...runtime.Object) ([]byte, error) {
	var out bytes.Buffer
	for i, o := range objs {
		b, err := kubeadmutil.MarshalToYamlForCodecs(o, v1beta4.SchemeGroupVersion, kubeadmscheme.Codecs)
		if err != nil {
			return nil, fmt.Errorf("kubeconf: marshal %T: %w", o, err)
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(b)
	}
	return out.Bytes(), nil
}

// ValidateInit converts init and cluster to kubeadm's internal types, as
// kubeadm does when it loads a config file, and runs kubeadm's
// ValidateInitConfiguration on them. It returns the internal object.
func ValidateInit(init *v1beta4.InitConfiguration, cluster *v1beta4.ClusterConfiguration) (*kubeadm.InitConfiguration, error) {
	internal := &kubeadm.InitConfiguration{}
	if err := kubeadmscheme.Scheme.Convert(init, internal, nil); err != nil {
		return nil, fmt.Errorf("kubeconf: convert InitConfiguration: %w", err)
	}
	if err := kubeadmscheme.Scheme.Convert(cluster, &internal.ClusterConfiguration, nil); err != nil {
		return nil, fmt.Errorf("kubeconf: convert ClusterConfiguration: %w", err)
	}
	if err := fieldErrors("InitConfiguration", validation.ValidateInitConfiguration(internal)); err != nil {
		return nil, err
	}
	return internal, nil
}

// ValidateJoin converts join to kubeadm's internal type and runs kubeadm's
// ValidateJoinConfiguration, then checks what kubeadm leaves to discovery
// time: that every CA hash is well formed.
func ValidateJoin(join *v1beta4.JoinConfiguration) (*kubeadm.JoinConfiguration, error) {
	internal := &kubeadm.JoinConfiguration{}
	if err := kubeadmscheme.Scheme.Convert(join, internal, nil); err != nil {
		return nil, fmt.Errorf("kubeconf: convert JoinConfiguration: %w", err)
	}
	errs := validation.ValidateJoinConfiguration(internal)
	if bt := internal.Discovery.BootstrapToken; bt != nil {
		// kubeadm accepts any string here and fails only when it pins
		// the CA during discovery; a node should learn of a bad hash
		// before it dials anything.
		if err := pubkeypin.NewSet().Allow(bt.CACertHashes...); err != nil {
			errs = append(errs, field.Invalid(field.NewPath("discovery", "bootstrapToken", "caCertHashes"), "", err.Error()))
		}
	}
	if err := fieldErrors("JoinConfiguration", errs); err != nil {
		return nil, err
	}
	return internal, nil
}

// Decode reads kubeadm YAML documents back into kubeadm's internal types
// strictly (unknown fields are errors), the way `kubeadm init|join
// --config` does, so that a test can check the bytes, not just the structs.
func Decode(doc []byte) ([]runtime.Object, error) {
	codecs := serializer.NewCodecFactory(kubeadmscheme.Scheme, serializer.EnableStrict)
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(doc)))
	var out []runtime.Object
	for i := 0; ; i++ {
		b, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("kubeconf: document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		obj, err := runtime.Decode(codecs.UniversalDecoder(kubeadm.SchemeGroupVersion), b)
		if err != nil {
			return nil, fmt.Errorf("kubeconf: document %d: %w", i, err)
		}
		out = append(out, obj)
	}
	return out, nil
}

func (c Cluster) withDefaults() Cluster {
	if c.Name == "" {
		c.Name = "kubernetes"
	}
	if c.KubernetesVersion == "" {
		c.KubernetesVersion = DefaultKubernetesVersion
	}
	if c.ServiceSubnet == "" {
		c.ServiceSubnet = v1beta4.DefaultServicesSubnet
	}
	if c.DNSDomain == "" {
		c.DNSDomain = v1beta4.DefaultServiceDNSDomain
	}
	return c
}

// check covers what kubeadm's validation lets through on purpose (empty
// values it would default or detect on the host); a Palisade node has no
// host to detect them from.
func (c Cluster) check() error {
	var errs field.ErrorList
	if c.ControlPlaneEndpoint == "" {
		errs = append(errs, field.Required(field.NewPath("controlPlaneEndpoint"), "the API server's host:port"))
	} else if _, _, err := net.SplitHostPort(c.ControlPlaneEndpoint); err != nil {
		errs = append(errs, field.Invalid(field.NewPath("controlPlaneEndpoint"), c.ControlPlaneEndpoint, "want host:port"))
	}
	if c.PodSubnet == "" {
		errs = append(errs, field.Required(field.NewPath("networking", "podSubnet"), "a CIDR"))
	}
	return fieldErrors("ClusterConfiguration", errs)
}

func (n Node) withDefaults() Node {
	if n.CRISocket == "" {
		n.CRISocket = DefaultCRISocket
	}
	return n
}

func (n Node) check() error {
	if !n.MeshAddress.IsValid() || n.MeshAddress.IsUnspecified() {
		return fieldErrors("node", field.ErrorList{field.Required(field.NewPath("nodeRegistration", "kubeletExtraArgs", "node-ip"), "the node's mesh address")})
	}
	return nil
}

func (n Node) registration() v1beta4.NodeRegistrationOptions {
	return v1beta4.NodeRegistrationOptions{
		Name:      n.Name,
		CRISocket: n.CRISocket,
		KubeletExtraArgs: []v1beta4.Arg{
			{Name: "node-ip", Value: n.MeshAddress.String()},
		},
	}
}

func typeMeta(kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: v1beta4.SchemeGroupVersion.String(), Kind: kind}
}

func uniq(s ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, v := range s {
		if v != "" && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("kubeconf: invalid configuration")

// fieldErrors turns kubeadm's field errors into one error naming each field.
// It leaves the offending values out on purpose: they include the bootstrap
// token and the certificate key, which must not reach a log.
func fieldErrors(kind string, errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, 0, len(errs))
	for _, e := range errs {
		msgs = append(msgs, fmt.Sprintf("%s: %s: %s", e.Field, e.Type, e.Detail))
	}
	return fmt.Errorf("%w: %s: %s", ErrInvalid, kind, strings.Join(msgs, "; "))
}
