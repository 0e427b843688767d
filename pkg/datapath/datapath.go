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
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/sirupsen/logrus"

	"github.com/sockbridge/sockbridge/pkg/bpffs"
	"github.com/sockbridge/sockbridge/pkg/bpfobj"
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
	// IPv4Only leaves out the IPv6 hooks (connect6, getpeername6). Only
	// for a kernel without IPv6 sockets at all: where AF_INET6 sockets
	// exist, an app could dial ::ffff:a.b.c.d or an IPv6 address past the
	// sidecar, so the probe's plan never sets it there.
	IPv4Only bool
	// Inbound loads inbound capture: the sk_lookup program that
	// AttachInbound attaches to each pod's network namespace, the bind
	// guards, and the sockops variant that records the sidecars' inbound
	// listeners (kernel 5.9). Off, none is loaded and pinned inbound links
	// are removed.
	Inbound bool
	// DNSPort is the sidecar's DNS proxy port on 127.0.0.1 and ::1
	// (Istio: 15053), where pods that capture DNS send their queries; 0
	// for a mesh without one.
	DNSPort uint16
	// NoDNS leaves out the DNS hooks (cgroup/sendmsg4 and 6, kernel 4.18;
	// recvmsg4 and 6, kernel 5.2) and turns the DNS branch of the connect
	// hooks off, for a kernel without them: no pod's DNS is captured, the
	// rest of the datapath runs as usual.
	NoDNS bool
	Log   logrus.FieldLogger
}

// IstioDefaults returns Istio's ports and sidecar identity, from the istio
// preset (pkg/policy holds every mesh's defaults, once).
func IstioDefaults() Config {
	c := Config{PinDir: DefaultPinDir}
	p, err := policy.PresetByName("istio")
	if err != nil {
		panic(err) // a built-in preset
	}
	c.ForPreset(p)
	return c
}

// ForPreset sets the sidecar identity and ports of a mesh preset.
func (c *Config) ForPreset(p *policy.Preset) {
	c.ProxyUID, c.ProxyGID = p.ProxyUID, p.ProxyGID
	c.OutboundPort, c.InboundPort = p.OutboundPort, p.InboundPort
	c.InboundSkipPorts = append([]uint16(nil), p.NeverCapturedInbound...)
	c.TunnelPort = p.TunnelPort
	c.DNSPort = p.DNSPort
}

// Validate checks the configuration without touching the kernel.
func (c *Config) Validate() error {
	if c.CgroupPath == "" {
		return errors.New("no cgroup path to attach to")
	}
	if c.PinDir == "" {
		return errors.New("no bpffs pin directory")
	}
	// The proxy's uid and gid are exempt from capture: root's would exempt
	// nearly every process on the node.
	if c.ProxyUID == 0 {
		return errors.New("proxy uid 0 (root): every root process would bypass capture")
	}
	if c.ProxyGID == 0 {
		return errors.New("proxy gid 0 (root): every process of group root would bypass capture")
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

// hook is one cgroup hook the datapath attaches a program to. Its link is
// pinned under links/<name>; which program goes there can depend on the
// plan (sockops: sockops_track or sockops_splice).
type hook struct {
	name   string
	attach ebpf.AttachType
}

// hooks lists every cgroup hook, in attach order: the program that starts
// capturing (connect4) last, once everything that completes a captured
// connection is in place.
var hooks = []hook{
	{"sockops", ebpf.AttachCGroupSockOps},
	{"getsockopt", ebpf.AttachCGroupGetsockopt},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername},
	{"bind4", ebpf.AttachCGroupInet4Bind},
	{"bind6", ebpf.AttachCGroupInet6Bind},
	{"connect4", ebpf.AttachCGroupInet4Connect},
	{"connect6", ebpf.AttachCGroupInet6Connect},
	// DNS capture: replies restored before queries are captured.
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg},
}

// HookNames names every cgroup hook the full datapath attaches a program
// to (each has one pinned link, links/<name>).
func HookNames() []string {
	names := make([]string, len(hooks))
	for i, h := range hooks {
		names[i] = h.name
	}
	return names
}

// ipv6Hooks are the hooks IPv4Only leaves out.
var ipv6Hooks = []string{"getpeername6", "connect6", "bind6", "recvmsg6", "sendmsg6"}

// dnsHooks are the hooks NoDNS leaves out.
var dnsHooks = []string{"recvmsg4", "recvmsg6", "sendmsg4", "sendmsg6"}

// Spec returns the datapath object's spec as compiled, for the probe to read
// which helpers its programs call.
func Spec() (*ebpf.CollectionSpec, error) {
	return loadDatapath()
}

// Program features: what a program of the object is loaded for, which
// tells the probe what a missing helper of that program turns off.
const (
	FeatureCapture = "capture"
	FeatureSplice  = "splice"
	FeatureInbound = "inbound"
	FeatureDNS     = "dns"
)

// ProgramFeature says what the named program is loaded for: "capture"
// (every plan), "splice", "inbound" or "dns" (only when that feature is on;
// a sockops variant with splicing and inbound counts as splice).
func ProgramFeature(name string) string {
	switch name {
	case datapathProgRecvmsg4Restore, datapathProgRecvmsg6Restore, datapathProgSendmsg4Redirect, datapathProgSendmsg6Redirect:
		return FeatureDNS
	case datapathProgSockopsSplice, datapathProgSkmsgSplice, datapathProgSockopsFull:
		return FeatureSplice
	case datapathProgSockopsListen, datapathProgSklookupInbound, datapathProgBind4Guard, datapathProgBind6Guard:
		return FeatureInbound
	}
	return FeatureCapture
}

// sockopsProgram is the sockops variant for a plan (bpf/sockops.c).
func sockopsProgram(cfg Config) string {
	switch {
	case cfg.Splice && cfg.Inbound:
		return datapathProgSockopsFull
	case cfg.Splice:
		return datapathProgSockopsSplice
	case cfg.Inbound:
		return datapathProgSockopsListen
	}
	return datapathProgSockopsTrack
}

// programsFor returns the program for each hook under cfg, and every
// program the plan loads; the others are dropped from the spec.
func programsFor(cfg Config) (attach map[string]string, keep []string) {
	attach = map[string]string{
		"sockops":      sockopsProgram(cfg),
		"getsockopt":   datapathProgGetsockoptOrigdst,
		"getpeername4": datapathProgGetpeername4Restore,
		"getpeername6": datapathProgGetpeername6Restore,
		"connect4":     datapathProgConnect4Redirect,
		"connect6":     datapathProgConnect6Redirect,
		"recvmsg4":     datapathProgRecvmsg4Restore,
		"recvmsg6":     datapathProgRecvmsg6Restore,
		"sendmsg4":     datapathProgSendmsg4Redirect,
		"sendmsg6":     datapathProgSendmsg6Redirect,
	}
	if cfg.Splice {
		keep = append(keep, datapathProgSkmsgSplice)
	}
	if cfg.Inbound {
		keep = append(keep, datapathProgSklookupInbound)
		attach["bind4"] = datapathProgBind4Guard
		attach["bind6"] = datapathProgBind6Guard
	}
	if cfg.IPv4Only {
		for _, h := range ipv6Hooks {
			delete(attach, h)
		}
	}
	if cfg.NoDNS || cfg.DNSPort == 0 {
		for _, h := range dnsHooks {
			delete(attach, h)
		}
	}
	for _, h := range hooks {
		if name, ok := attach[h.name]; ok {
			keep = append(keep, name)
		}
	}
	return attach, keep
}

// Datapath is a loaded, attached datapath. Close releases the agent's file
// descriptors and leaves the pinned datapath in place; Uninstall removes it.
type Datapath struct {
	cfg   Config
	maps  datapathMaps // nil fields: maps the plan left out (sb_sockhash without splicing)
	coll  *ebpf.Collection
	links map[string]link.Link
	// counters names sb_stats' slots after enum sb_stat.
	counters *bpfobj.Counters

	mu    sync.Mutex
	rules map[uint64]*podRules // what each pod owns in the rule maps; nil until first read
	// inbound holds each pod's sk_lookup link (inbound capture), by pod
	// cgroup id.
	inbound map[uint64]link.Link
}

// Load loads the datapath object with cfg's settings, pins its maps under
// cfg.PinDir (reusing maps already pinned there), and attaches each program
// to cfg.CgroupPath, adopting and updating links a previous agent pinned.
// Programs the plan does not use (the splice programs with cfg.Splice off)
// are dropped before loading, and so are the maps only they use: without
// splicing, neither sb_sockhash nor skmsg_splice is created.
//
// The caller removes the memlock rlimit first on kernels before 5.11
// (rlimit.RemoveMemlock; cmd/sockbridge does).
func Load(cfg Config) (_ *Datapath, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = logrus.StandardLogger()
	}
	cgroupID, err := cgroups.ID(cfg.CgroupPath)
	if err != nil {
		return nil, fmt.Errorf("attach cgroup: %w", err)
	}
	if err := EnsurePinDir(cfg.PinDir); err != nil {
		return nil, err
	}
	if err := replaceOldLayout(cfg); err != nil {
		return nil, err
	}
	if err := replaceIncompatibleMaps(cfg); err != nil {
		return nil, err
	}

	dp := &Datapath{cfg: cfg, links: map[string]link.Link{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, dp.Close())
		}
	}()

	attachProgs, keep := programsFor(cfg)
	spec, err := dp.spec(keep)
	if err != nil {
		return nil, err
	}
	if dp.counters, err = bpfobj.CountersOf(spec, "sb_stat", "SB_STAT_"); err != nil {
		return nil, err
	}
	dp.coll, err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}})
	if err != nil {
		return nil, describeLoadError(err, cfg.PinDir)
	}
	assignMaps(dp.coll.Maps, &dp.maps)
	// The splice program goes on the sockhash before sockops can fill it.
	if err := dp.setSplice(dp.coll.Programs[datapathProgSkmsgSplice]); err != nil {
		return nil, err
	}
	for _, h := range hooks {
		name, ok := attachProgs[h.name]
		if !ok {
			if err := detachPinned(cfg.PinDir, h.name); err != nil {
				return nil, err
			}
			continue
		}
		l, err := attach(cfg, cgroupID, h, name, dp.coll.Programs[name])
		if err != nil {
			return nil, err
		}
		dp.links[h.name] = l
	}
	if err := dp.adoptInbound(); err != nil {
		return nil, err
	}
	return dp, nil
}

// spec returns the datapath's spec with the config set and only the
// programs in keep, and the maps they use.
func (dp *Datapath) spec(keep []string) (*ebpf.CollectionSpec, error) {
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	if err := bpfobj.SetVariables(spec, map[string]any{datapathVarSbCfg: dp.cfg.config()}); err != nil {
		return nil, err
	}
	if err := bpfobj.Keep(spec, keep); err != nil {
		return nil, err
	}
	return spec, nil
}

// assignMaps sets each field of dst (a struct of *ebpf.Map with ebpf tags)
// whose map is in maps, leaving the others nil: unlike Collection.Assign it
// accepts maps the plan left out.
func assignMaps(maps map[string]*ebpf.Map, dst *datapathMaps) {
	v := reflect.ValueOf(dst).Elem()
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Tag.Get("ebpf")
		if m, ok := maps[name]; ok {
			v.Field(i).Set(reflect.ValueOf(m))
		}
	}
}

// config is the datapath's load-time settings as the BPF side sees them.
func (c *Config) config() datapathSbConfig {
	v := datapathSbConfig{
		ProxyUid:     c.ProxyUID,
		ProxyGid:     c.ProxyGID,
		OutboundPort: c.OutboundPort,
		InboundPort:  c.InboundPort,
		TunnelPort:   c.TunnelPort,
	}
	copy(v.InboundSkipPorts[:], c.InboundSkipPorts)
	if !c.NoDNS {
		v.DnsPort = c.DNSPort
	}
	return v
}

// setSplice attaches prog to sb_sockhash as its sk_msg verdict program
// (replacing one a previous agent attached), or, with splicing off,
// detaches whatever a previous agent attached to a pinned sb_sockhash. The
// attachment lives as long as the pinned map. A sockhash left pinned by an
// agent that spliced is not removed (removing it would drop bytes queued on
// its sockets); its sockets leave it as they close, and uninstall removes it.
func (dp *Datapath) setSplice(prog *ebpf.Program) error {
	if dp.cfg.Splice {
		if prog == nil || dp.maps.SbSockhash == nil {
			return errors.New("attach skmsg_splice: program or sb_sockhash missing from the datapath object")
		}
		err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: dp.maps.SbSockhash.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict})
		if err != nil {
			return fmt.Errorf("attach skmsg_splice to sb_sockhash: %w", err)
		}
		return nil
	}
	sockhash, err := ebpf.LoadPinnedMap(filepath.Join(dp.cfg.PinDir, datapathMapSbSockhash), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned sb_sockhash: %w", err)
	}
	defer sockhash.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: sockhash.FD(), Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		// Querying sockmap programs needs kernel 6.0.
		dp.cfg.Log.WithError(err).Warn("cannot detach the sk_msg program of a sockhash pinned by an agent that spliced: sockets already spliced stay spliced until they close")
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

// describeLoadError prints a verifier error in full and explains a pinned
// map that no longer matches this version's definition.
func describeLoadError(err error, pinDir string) error {
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("load the datapath: a map pinned in %s by another sockbridge version is incompatible (run `sockbridge uninstall` first): %w", pinDir, err)
	}
	return bpfobj.LoadError("the datapath", err)
}

// attach adopts the link pinned for h when it is attached to the same
// cgroup, updating it to prog; otherwise it attaches anew and pins the link.
func attach(cfg Config, cgroupID uint64, h hook, name string, prog *ebpf.Program) (link.Link, error) {
	if prog == nil {
		return nil, fmt.Errorf("attach %s: program %s missing from the datapath object", h.name, name)
	}
	pin := filepath.Join(cfg.PinDir, linksDir, h.name)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgroupID {
			if err := old.Update(prog); err != nil {
				old.Close()
				return nil, fmt.Errorf("update pinned %s link to %s: %w", h.name, name, err)
			}
			cfg.Log.WithField("hook", h.name).WithField("program", name).Debug("adopted pinned link")
			return old, nil
		}
		// Pinned for another cgroup: the configuration changed.
		cfg.Log.WithField("hook", h.name).Info("replacing link pinned for another cgroup")
		err := errors.Join(old.Unpin(), old.Close())
		if err != nil {
			return nil, fmt.Errorf("remove stale %s link: %w", h.name, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pinned %s link: %w", h.name, err)
	}

	l, err := link.AttachCgroup(link.CgroupOptions{Path: cfg.CgroupPath, Attach: h.attach, Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attach %s to %s: %w", name, cfg.CgroupPath, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin %s link: %w", h.name, err)
	}
	return l, nil
}

// replaceOldLayout uninstalls a datapath pinned by an agent of the earlier
// layout (links pinned by program name, one object per hook family), so
// that this agent installs its own cleanly; it says so in one log line.
// Connections opened in between are not captured: the zero-gap upgrade
// across layouts is the versioned pin layout's job.
func replaceOldLayout(cfg Config) error {
	entries, err := os.ReadDir(filepath.Join(cfg.PinDir, linksDir))
	if err != nil {
		return nil // nothing pinned yet
	}
	known := map[string]bool{inboundLinksDir: true}
	for _, h := range hooks {
		known[h.name] = true
	}
	var old []string
	for _, e := range entries {
		if !known[e.Name()] {
			old = append(old, e.Name())
		}
	}
	if len(old) == 0 {
		return nil
	}
	cfg.Log.WithField("pin_dir", cfg.PinDir).WithField("old_links", old).
		Warn("found a datapath pinned by an earlier sockbridge layout: uninstalling it and installing this version's")
	if err := Uninstall(cfg.PinDir); err != nil {
		return fmt.Errorf("replace the earlier layout in %s: %w", cfg.PinDir, err)
	}
	return EnsurePinDir(cfg.PinDir)
}

// replaceIncompatibleMaps uninstalls a datapath whose pinned maps no
// longer match this version's definitions (a map layout change, e.g. the
// IPv4-only maps before the IPv6 datapath), so that this agent installs its
// own cleanly instead of failing to load; it says so in one log line.
// Connections opened in between are not captured: the zero-gap upgrade
// across layout changes is the versioned pin layout's job.
func replaceIncompatibleMaps(cfg Config) error {
	spec, err := loadDatapath()
	if err != nil {
		return fmt.Errorf("load datapath spec: %w", err)
	}
	var stale []string
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(cfg.PinDir, name), nil)
		if err != nil {
			continue // not pinned (yet): nothing to be incompatible with
		}
		if err := ms.Compatible(m); err != nil {
			stale = append(stale, name)
		}
		m.Close()
	}
	if len(stale) == 0 {
		return nil
	}
	slices.Sort(stale)
	cfg.Log.WithField("pin_dir", cfg.PinDir).WithField("incompatible_maps", stale).
		Warn("found a datapath pinned by a sockbridge version with another map layout: uninstalling it and installing this version's")
	if err := Uninstall(cfg.PinDir); err != nil {
		return fmt.Errorf("replace the datapath with incompatible maps in %s: %w", cfg.PinDir, err)
	}
	return EnsurePinDir(cfg.PinDir)
}

// detachPinned removes the link a previous agent pinned for a hook this
// agent's plan leaves out.
func detachPinned(pinDir, hookName string) error {
	pin := filepath.Join(pinDir, linksDir, hookName)
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned %s link: %w", hookName, err)
	}
	if err := errors.Join(l.Unpin(), l.Close()); err != nil {
		return fmt.Errorf("detach %s: %w", hookName, err)
	}
	return nil
}

// Close releases the agent's handles. Pinned links keep the programs
// attached and pinned maps keep their contents.
func (dp *Datapath) Close() error {
	var errs []error
	for _, l := range dp.links {
		errs = append(errs, l.Close())
	}
	for _, l := range dp.inbound {
		errs = append(errs, l.Close())
	}
	if dp.coll != nil {
		dp.coll.Close()
	}
	dp.links, dp.coll, dp.inbound = nil, nil, nil
	return errors.Join(errs...)
}

// Uninstall detaches every program sockbridge pinned under pinDir and
// removes its maps and the directory. It succeeds when nothing is there.
// It refuses, before removing anything, a directory that is not on bpffs,
// the bpffs mount point itself, and one holding anything sockbridge does not
// pin (a map not named sb_*, a subdirectory other than links/ and
// links/inbound/): those pins
// are another tool's, and removing them would detach its programs.
func Uninstall(pinDir string) error {
	if _, err := os.Lstat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	maps, err := ownPins(pinDir)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	var errs []error
	var pins []string
	for _, dir := range []string{filepath.Join(pinDir, linksDir), filepath.Join(pinDir, linksDir, inboundLinksDir)} {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("list links in %s: %w", dir, err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				pins = append(pins, filepath.Join(dir, e.Name()))
			}
		}
	}
	for _, pin := range pins {
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
	for _, name := range maps {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", name, err))
		}
	}
	for _, dir := range []string{filepath.Join(pinDir, linksDir, inboundLinksDir), filepath.Join(pinDir, linksDir), pinDir} {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// ownPins checks that dir is a sockbridge pin directory on bpffs, below
// the mount point, holding only sockbridge's pins, and returns the names of
// the maps pinned in it.
func ownPins(dir string) ([]string, error) {
	on, err := bpffs.Is(dir)
	if err != nil {
		return nil, err
	}
	if !on {
		return nil, fmt.Errorf("%s is not on bpffs: refusing to remove it", dir)
	}
	if parent, err := bpffs.Is(filepath.Dir(filepath.Clean(dir))); err != nil || !parent {
		return nil, fmt.Errorf("%s is a bpffs mount point, not a sockbridge pin directory: refusing to remove it", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var maps, foreign []string
	for _, e := range entries {
		switch {
		case e.IsDir() && e.Name() == linksDir:
			sub, err := os.ReadDir(filepath.Join(dir, linksDir))
			if err != nil {
				return nil, fmt.Errorf("list %s: %w", filepath.Join(dir, linksDir), err)
			}
			for _, l := range sub {
				if l.IsDir() && l.Name() != inboundLinksDir {
					foreign = append(foreign, filepath.Join(linksDir, l.Name())+"/")
				}
			}
		case !e.IsDir() && strings.HasPrefix(e.Name(), "sb_"):
			maps = append(maps, e.Name())
		case e.IsDir():
			foreign = append(foreign, e.Name()+"/")
		default:
			foreign = append(foreign, e.Name())
		}
	}
	if len(foreign) > 0 {
		return nil, fmt.Errorf("%s holds %s, which sockbridge does not pin: refusing to remove it", dir, strings.Join(foreign, ", "))
	}
	return maps, nil
}

// EnsurePinDir creates dir on bpffs, mounting bpffs at /sys/fs/bpf first
// when dir lies below it and nothing is mounted there yet.
func EnsurePinDir(dir string) error {
	if err := bpffs.Mount(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, linksDir), 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	ok, err := bpffs.Is(dir)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("pin directory %s is not on bpffs (mount -t bpf bpf %s)", dir, filepath.Dir(dir))
	}
	return nil
}
