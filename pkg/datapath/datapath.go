// Package datapath loads sockbridge's BPF programs, attaches them to a
// cgroup v2 subtree with bpf_link, pins maps and links under a bpffs
// directory so the datapath outlives the agent, and edits the maps.
//
// Kernel: 5.15 or later for the full datapath (bpf_get_netns_cookie from
// sockops); bpf_link for cgroup programs needs 5.7. On an older kernel Load
// fails with the verifier's or the kernel's error; the capability probe
// (pkg/probe) tells beforehand.
package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// DefaultPinDir is where the agent pins its maps and links.
const DefaultPinDir = "/sys/fs/bpf/sockbridge"

// linksDir is the subdirectory of the pin directory holding link pins.
const linksDir = "links"

// Config says where and how the datapath is installed.
type Config struct {
	// CgroupPath is the cgroup v2 directory the programs attach to; every
	// pod cgroup must lie below it.
	CgroupPath string
	// PinDir is a directory on bpffs for the maps and links.
	PinDir string
	// ProxyUID and ProxyGID identify the sidecar, whose connections are
	// not captured.
	ProxyUID, ProxyGID uint32
	// OutboundPort is where the sidecar accepts captured outbound
	// connections (Istio: 15001); InboundPort where it accepts inbound
	// ones (Istio: 15006).
	OutboundPort, InboundPort uint16
	// InboundSkipPorts are never redirected to InboundPort (at most 8).
	InboundSkipPorts []uint16
	// TunnelPort is the one port of its own pod IP a sidecar reaches
	// directly instead of through its inbound port (Istio: 15008); 0 none.
	TunnelPort uint16
	// Splice adds the sockets of captured flows to a sockhash and
	// redirects their bytes with sk_msg (kernel 5.15 for the netns-aware
	// keys). Off, no socket enters the sockhash. Sidecars that use
	// splice(2) (io.Copy between Go TCP conns, HAProxy's splice-*
	// options) must run with it off.
	Splice bool
	Log    logrus.FieldLogger
}

// IstioDefaults returns Istio's ports and sidecar identity.
func IstioDefaults() Config {
	return Config{
		PinDir:           DefaultPinDir,
		ProxyUID:         1337,
		ProxyGID:         1337,
		OutboundPort:     15001,
		InboundPort:      15006,
		InboundSkipPorts: []uint16{15008, 15020, 15021, 15090},
		TunnelPort:       15008,
	}
}

// ForPreset sets the sidecar identity and ports of a mesh preset.
func (c *Config) ForPreset(p *policy.Preset) {
	c.ProxyUID, c.ProxyGID = p.ProxyUID, p.ProxyGID
	c.OutboundPort, c.InboundPort = p.OutboundPort, p.InboundPort
	c.InboundSkipPorts = append([]uint16(nil), p.NeverCapturedInbound...)
	c.TunnelPort = p.TunnelPort
}

func (c *Config) validate() error {
	if c.CgroupPath == "" {
		return errors.New("no cgroup path to attach to")
	}
	if c.PinDir == "" {
		return errors.New("no bpffs pin directory")
	}
	if c.OutboundPort == 0 || c.InboundPort == 0 {
		return errors.New("outbound and inbound ports must be set")
	}
	if len(c.InboundSkipPorts) > maxSkipPorts {
		return fmt.Errorf("%d inbound skip ports given, at most %d fit", len(c.InboundSkipPorts), maxSkipPorts)
	}
	return nil
}

const maxSkipPorts = 8

// program names one attached program and how it attaches.
type program struct {
	name   string
	attach ebpf.AttachType
}

// attachments lists every cgroup program, in attach order.
var attachments = []program{
	{"sockops_track", ebpf.AttachCGroupSockOps},
	{"getsockopt_origdst", ebpf.AttachCGroupGetsockopt},
	{"getpeername4_restore", ebpf.AttachCgroupInet4GetPeername},
	{"connect4_redirect", ebpf.AttachCGroupInet4Connect},
}

// Datapath is a loaded, attached datapath. Close releases the agent's file
// descriptors and leaves the pinned datapath in place; Uninstall removes it.
type Datapath struct {
	cfg   Config
	maps  connectMaps
	colls []*ebpf.Collection
	links map[string]link.Link
	iter  *ebpf.Program // iter_socks, not attached until read

	mu    sync.Mutex
	rules map[uint64]*podRules // what each pod owns in the rule maps; nil until first read
}

// Load loads the programs with cfg's constants, pins their maps under
// cfg.PinDir (reusing maps already pinned there), and attaches each program
// to cfg.CgroupPath, adopting and updating links a previous agent pinned.
func Load(cfg Config) (_ *Datapath, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = logrus.StandardLogger()
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	cgroupID, err := cgroups.ID(cfg.CgroupPath)
	if err != nil {
		return nil, fmt.Errorf("attach cgroup: %w", err)
	}
	if err := ensurePinDir(cfg.PinDir); err != nil {
		return nil, err
	}

	dp := &Datapath{cfg: cfg, links: map[string]link.Link{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, dp.Close())
		}
	}()

	programs, err := dp.loadCollections()
	if err != nil {
		return nil, err
	}
	// The splice program goes on the sockhash before sockops can fill it.
	if err := dp.setSplice(programs["skmsg_splice"]); err != nil {
		return nil, err
	}
	for _, p := range attachments {
		l, err := attach(cfg, cgroupID, p, programs[p.name])
		if err != nil {
			return nil, err
		}
		dp.links[p.name] = l
	}
	return dp, nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// setSplice attaches prog to sb_sockhash as its sk_msg verdict program
// (replacing one a previous agent attached), or, with splicing off,
// detaches whatever is attached there. The attachment lives as long as the
// pinned map.
func (dp *Datapath) setSplice(prog *ebpf.Program) error {
	sockhash := dp.maps.SbSockhash
	if dp.cfg.Splice {
		if prog == nil {
			return errors.New("attach skmsg_splice: program missing from the BPF objects")
		}
		err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: sockhash.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict})
		if err != nil {
			return fmt.Errorf("attach skmsg_splice to sb_sockhash: %w", err)
		}
		return nil
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: sockhash.FD(), Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		// Querying sockmap programs needs kernel 6.0; nothing was
		// attached by this agent in that case.
		dp.cfg.Log.WithError(err).Debug("query sk_msg programs on sb_sockhash")
		return nil
	}
	for _, ap := range res.Programs {
		old, err := ebpf.NewProgramFromID(ap.ID)
		if err != nil {
			return fmt.Errorf("open attached sk_msg program %d: %w", ap.ID, err)
		}
		err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: sockhash.FD(), Program: old, Attach: ebpf.AttachSkMsgVerdict})
		old.Close()
		if err != nil {
			return fmt.Errorf("detach sk_msg program %d from sb_sockhash: %w", ap.ID, err)
		}
	}
	return nil
}

// loadCollections loads every object and returns its programs by name.
func (dp *Datapath) loadCollections() (map[string]*ebpf.Program, error) {
	connect, err := loadConnect()
	if err != nil {
		return nil, fmt.Errorf("load connect spec: %w", err)
	}
	if err := setConstants(connect, dp.connectConstants()); err != nil {
		return nil, err
	}
	sockops, err := loadSockops()
	if err != nil {
		return nil, fmt.Errorf("load sockops spec: %w", err)
	}
	sockopt, err := loadSockopt()
	if err != nil {
		return nil, fmt.Errorf("load sockopt spec: %w", err)
	}
	if err := setConstants(sockops, map[string]any{"splice_enabled": boolByte(dp.cfg.Splice)}); err != nil {
		return nil, err
	}
	skmsg, err := loadSkmsg()
	if err != nil {
		return nil, fmt.Errorf("load skmsg spec: %w", err)
	}

	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dp.cfg.PinDir}}
	programs := map[string]*ebpf.Program{}
	for _, spec := range []*ebpf.CollectionSpec{connect, sockops, sockopt, skmsg} {
		coll, err := ebpf.NewCollectionWithOptions(spec, *opts)
		if err != nil {
			return nil, describeLoadError(err, dp.cfg.PinDir)
		}
		dp.colls = append(dp.colls, coll)
		for name, p := range coll.Programs {
			programs[name] = p
		}
	}
	if err := dp.colls[0].Assign(&dp.maps); err != nil {
		return nil, fmt.Errorf("assign maps: %w", err)
	}
	dp.iter = dp.loadIter()
	return programs, nil
}

// loadIter loads the flow iterator, which only inspection needs: without
// it (kernel < 5.9) the datapath runs and Flows reports an error.
func (dp *Datapath) loadIter() *ebpf.Program {
	spec, err := loadIter()
	if err == nil {
		var coll *ebpf.Collection
		coll, err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dp.cfg.PinDir}})
		if err == nil {
			dp.colls = append(dp.colls, coll)
			return coll.Programs["iter_socks"]
		}
	}
	dp.cfg.Log.WithError(err).Warn("flow iterator unavailable (needs kernel 5.9): live flows cannot be listed")
	return nil
}

// connectConstants are connect.c's load-time settings.
func (dp *Datapath) connectConstants() map[string]any {
	var skip [maxSkipPorts]uint16
	copy(skip[:], dp.cfg.InboundSkipPorts)
	return map[string]any{
		"proxy_uid":          dp.cfg.ProxyUID,
		"proxy_gid":          dp.cfg.ProxyGID,
		"outbound_port":      dp.cfg.OutboundPort,
		"inbound_port":       dp.cfg.InboundPort,
		"inbound_skip_ports": skip,
		"tunnel_port":        dp.cfg.TunnelPort,
	}
}

// setConstants sets const volatile globals of an object before it loads.
func setConstants(spec *ebpf.CollectionSpec, consts map[string]any) error {
	for name, v := range consts {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("set constant %s: not in the BPF object", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set constant %s: %w", name, err)
		}
	}
	return nil
}

// describeLoadError prints a verifier error in full and explains a pinned
// map that no longer matches this version's definition.
func describeLoadError(err error, pinDir string) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load BPF programs: %+v", ve)
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("load BPF programs: a map pinned in %s by another sockbridge version is incompatible (run `sockbridge uninstall` first): %w", pinDir, err)
	}
	return fmt.Errorf("load BPF programs: %w", err)
}

// attach adopts the link pinned for p when it is attached to the same cgroup,
// updating it to prog; otherwise it attaches anew and pins the link.
func attach(cfg Config, cgroupID uint64, p program, prog *ebpf.Program) (link.Link, error) {
	if prog == nil {
		return nil, fmt.Errorf("attach %s: program missing from the BPF objects", p.name)
	}
	pin := filepath.Join(cfg.PinDir, linksDir, p.name)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgroupID {
			if err := old.Update(prog); err != nil {
				old.Close()
				return nil, fmt.Errorf("update pinned %s link: %w", p.name, err)
			}
			cfg.Log.WithField("program", p.name).Debug("adopted pinned link")
			return old, nil
		}
		// Pinned for another cgroup: the configuration changed.
		cfg.Log.WithField("program", p.name).Info("replacing link pinned for another cgroup")
		err := errors.Join(old.Unpin(), old.Close())
		if err != nil {
			return nil, fmt.Errorf("remove stale %s link: %w", p.name, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pinned %s link: %w", p.name, err)
	}

	l, err := link.AttachCgroup(link.CgroupOptions{Path: cfg.CgroupPath, Attach: p.attach, Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attach %s to %s: %w", p.name, cfg.CgroupPath, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin %s link (bpf_link for cgroups needs kernel 5.7): %w", p.name, err)
	}
	return l, nil
}

// Close releases the agent's handles. Pinned links keep the programs
// attached and pinned maps keep their contents.
func (dp *Datapath) Close() error {
	var errs []error
	for _, l := range dp.links {
		errs = append(errs, l.Close())
	}
	for i := len(dp.colls) - 1; i >= 0; i-- {
		dp.colls[i].Close()
	}
	dp.links, dp.colls = nil, nil
	return errors.Join(errs...)
}

// Uninstall detaches every program sockbridge pinned under pinDir and
// removes its maps and the directory. It succeeds when nothing is there.
func Uninstall(pinDir string) error {
	var errs []error
	links, err := os.ReadDir(filepath.Join(pinDir, linksDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("list links in %s: %w", pinDir, err)
	}
	for _, e := range links {
		pin := filepath.Join(pinDir, linksDir, e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", pin, err))
			continue
		}
		// The kernel detaches a cgroup link when its last reference goes.
		if err := errors.Join(l.Unpin(), l.Close()); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
		}
	}
	if err := os.RemoveAll(pinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", pinDir, err))
	}
	return errors.Join(errs...)
}

// ensurePinDir creates dir on bpffs, mounting bpffs at /sys/fs/bpf when dir
// lies below it and nothing is mounted there yet.
func ensurePinDir(dir string) error {
	const bpffsRoot = "/sys/fs/bpf"
	parent := filepath.Dir(filepath.Clean(dir))
	if ok, _ := isBPFFS(parent); !ok && parent == bpffsRoot {
		if err := os.MkdirAll(bpffsRoot, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", bpffsRoot, err)
		}
		if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", bpffsRoot, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, linksDir), 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	ok, err := isBPFFS(dir)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("pin directory %s is not on bpffs (mount -t bpf bpf %s)", dir, parent)
	}
	return nil
}

func isBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}
