// Package datapath loads sockbridge's BPF programs, attaches them to a
// cgroup v2 subtree with bpf_link, pins maps and links under a bpffs
// directory so the datapath outlives the agent, and edits the maps. The
// pinned layout is versioned (LayoutVersion): a new agent adopts its own
// version's datapath, migrates from the earlier one without a gap, and
// refuses a newer one.
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
	// OutboundLoopbackOnly says the sidecar's IPv6 outbound listener is on
	// [::1] only (policy.Preset.OutboundListenerLoopbackOnly): native IPv6
	// connections go to [::1] from ::1. Off, they go to the pod's IPv6
	// address from that address, which a wildcard listener accepts.
	OutboundLoopbackOnly bool
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
	c.OutboundLoopbackOnly = p.OutboundListenerLoopbackOnly
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

// hooks lists every cgroup hook in attach (and switch) order: whatever
// completes a captured connection before what starts one, so that at every
// step of an install or an upgrade each connection is handled by programs
// that understand the state it was given. getsockopt first, since the new
// getsockopt reads the state the old sockops leaves (and the earlier
// layout's, bpf/legacy.c) while the old getsockopt cannot read the new
// sockops' state; then sockops, which hands over what either connect
// stored; the getpeername answers; the bind guards; the DNS reply restore;
// and the hooks that start capturing (connect4/6, and sendmsg4/6 for DNS)
// last. Removal goes the other way round.
var hooks = []hook{
	{"getsockopt", ebpf.AttachCGroupGetsockopt},
	{"sockops", ebpf.AttachCGroupSockOps},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername},
	{"bind4", ebpf.AttachCGroupInet4Bind},
	{"bind6", ebpf.AttachCGroupInet6Bind},
	// Replies restored before queries are captured: connect4/6's DNS
	// branch captures connected UDP, whose replies recvmsg4/6 restore.
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg},
	{"connect4", ebpf.AttachCGroupInet4Connect},
	{"connect6", ebpf.AttachCGroupInet6Connect},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg},
}

// hookIndex is h's place in hooks, len(hooks) for an unknown name.
func hookIndex(name string) int {
	for i, h := range hooks {
		if h.name == name {
			return i
		}
	}
	return len(hooks)
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
	cfg      Config
	cgroupID uint64
	maps     datapathMaps // nil fields: maps the plan left out (sb_sockhash without splicing)
	coll     *ebpf.Collection
	// attach names the program of each hook the plan uses.
	attach map[string]string
	links  map[string]link.Link
	// counters names sb_stats' slots after enum sb_stat.
	counters *bpfobj.Counters
	// legacy: the programs read layout 1's maps (bpf/legacy.c).
	legacy bool

	mu sync.Mutex
	// pending: loaded over layout 1, whose programs still run until
	// Switch.
	pending bool
	rules   map[uint64]*podRules // what each pod owns in the rule maps; nil until first read
	// inbound holds each pod's sk_lookup link (inbound capture), by pod
	// cgroup id.
	inbound map[uint64]link.Link
}

// Load loads the datapath object with cfg's settings and its maps, pinned
// in MapDir(cfg.PinDir) (reusing the maps of this layout already pinned
// there), and attaches each program to cfg.CgroupPath, updating in place
// the links a previous agent pinned. Programs the plan does not use (the
// splice programs with cfg.Splice off) are dropped before loading, and so
// are the maps only they use: without splicing, neither sb_sockhash nor
// skmsg_splice is created.
//
// A datapath of layout 1 (an agent up to 9048814) keeps running: Load
// leaves its links alone and returns a Datapath whose switch is pending
// (SwitchPending). The caller fills the pod map (SyncPods) and then calls
// Switch, which moves every hook to this agent's programs in place. A
// layout newer than LayoutVersion, or one this agent cannot take over, is
// refused before anything is touched.
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
	full, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	found, err := inspectLayout(cfg.PinDir, full)
	if err != nil {
		return nil, err
	}
	if err := EnsurePinDir(cfg.PinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(MapDir(cfg.PinDir), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", MapDir(cfg.PinDir), err)
	}

	dp := &Datapath{cfg: cfg, cgroupID: cgroupID, links: map[string]link.Link{}, inbound: map[uint64]link.Link{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, dp.Close())
		}
	}()
	legacy, err := openLegacy(cfg.PinDir, found, cfg.Log)
	if err != nil {
		return nil, err
	}
	defer closeMaps(legacy) // the collection holds clones
	dp.legacy = len(legacy) > 0

	var keep []string
	dp.attach, keep = programsFor(cfg)
	spec, err := dp.spec(keep)
	if err != nil {
		return nil, err
	}
	if !dp.legacy {
		// Placeholders: the fallbacks that read them are dead code.
		if ms := spec.Maps[datapathMapSbTuplesV1]; ms != nil {
			ms.MaxEntries = 1
		}
	}
	for name := range legacy {
		if _, ok := spec.Maps[name]; !ok {
			delete(legacy, name)
		}
	}
	if dp.counters, err = bpfobj.CountersOf(spec, "sb_stat", "SB_STAT_"); err != nil {
		return nil, err
	}
	dp.coll, err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: MapDir(cfg.PinDir)},
		MapReplacements: legacy,
	})
	if err != nil {
		return nil, describeLoadError(err, MapDir(cfg.PinDir))
	}
	assignMaps(dp.coll.Maps, &dp.maps)
	if found.layout1() {
		dp.pending = true
		cfg.Log.WithField("pin_dir", cfg.PinDir).Info("found a datapath of pinned layout 1 (an earlier sockbridge): it keeps capturing until this agent's pod map is filled, then every hook switches to this agent's programs in place")
		return dp, nil
	}
	if err := dp.switchHooks(); err != nil {
		return nil, err
	}
	return dp, nil
}

// SwitchPending reports whether the datapath was loaded over layout 1's,
// whose programs run until Switch.
func (dp *Datapath) SwitchPending() bool {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.pending
}

// Switch moves every hook of a datapath loaded over layout 1 to this
// datapath's programs, in hooks order, each link updated in place
// (link.Update: the kernel swaps the program atomically) and re-pinned at
// its hook's name, then adds layout 1's counters to this layout's and
// removes its flat pins. Call it once the pod map holds the pods: from the
// first hook on, this datapath's maps decide. Connections layout 1's
// programs captured are finished from its maps (bpf/legacy.c). Switch does
// nothing when no switch is pending; after a failure it can be called
// again.
//
// Kernel: BPF_LINK_UPDATE for cgroup links, 5.7 (as for a restart).
func (dp *Datapath) Switch() error {
	dp.mu.Lock()
	pending := dp.pending
	dp.mu.Unlock()
	if !pending {
		return nil
	}
	if err := dp.switchHooks(); err != nil {
		return err
	}
	if err := dp.finishLayout1(); err != nil {
		return fmt.Errorf("remove layout 1's pins after the switch: %w", err)
	}
	dp.mu.Lock()
	dp.pending = false
	dp.mu.Unlock()
	dp.cfg.Log.WithField("pin_dir", dp.cfg.PinDir).Info("switched every hook from layout 1 to this agent's programs; connections layout 1 captured are finished from its maps, kept in " + legacyPinDir(dp.cfg.PinDir))
	return nil
}

// LegacyInUse reports whether this datapath's programs read layout 1's
// maps (bpf/legacy.c): it was loaded over layout 1, or after an upgrade
// from it while sockets layout 1 captured were still open.
func (dp *Datapath) LegacyInUse() bool { return dp.legacy }

// DropLegacy removes layout 1's maps from v<N>/legacy/ once no socket needs
// them (see dropLegacyIfUnused) and reports whether they are gone. It does
// nothing while a switch is pending. The programs loaded with them keep
// them until the next agent loads its own, without.
//
// Kernel: sock_diag with INET_DIAG_REQ_SK_BPF_STORAGES, 5.2; CAP_SYS_ADMIN
// to enter every network namespace (pkg/sockdiag). When a namespace cannot
// be read it returns the error and keeps the maps.
func (dp *Datapath) DropLegacy() (bool, error) {
	if !dp.legacy || dp.SwitchPending() {
		return !dp.legacy, nil
	}
	if _, err := os.Stat(legacyPinDir(dp.cfg.PinDir)); errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	return dropLegacyIfUnused(dp.cfg.PinDir)
}

// switchHooks attaches each hook's program in hooks order: the sk_msg
// program on the sockhash before sockops can fill it, then each cgroup
// hook, then the inbound links. Links pinned for another cgroup and links
// of hooks the plan leaves out are removed after every hook is attached, in
// the reverse order: the hook that starts capturing first.
func (dp *Datapath) switchHooks() error {
	// The splice program goes on the sockhash before sockops can fill it.
	if err := dp.setSplice(dp.coll.Programs[datapathProgSkmsgSplice]); err != nil {
		return err
	}
	stale := make([][]pinnedLink, len(hooks))
	for i, h := range hooks {
		name, ok := dp.attach[h.name]
		if !ok {
			// Detached with the stale links, below.
			ls, err := pinnedLinks(dp.cfg.PinDir, h.name)
			if err != nil {
				closePinned(ls)
				closeStale(stale)
				return err
			}
			stale[i] = ls
			continue
		}
		l, old, err := dp.attachHook(h, name, dp.coll.Programs[name])
		stale[i] = old
		if err != nil {
			closeStale(stale)
			return err
		}
		dp.links[h.name] = l
	}
	var errs []error
	for i := len(hooks) - 1; i >= 0; i-- {
		for _, s := range stale[i] {
			if s.pin != "" {
				dp.cfg.Log.WithField("hook", hooks[i].name).WithField("pin", s.pin).Info("removing a link this agent does not use (pinned for another cgroup, by an earlier layout, or for a hook the plan leaves out)")
			}
			if err := s.remove(); err != nil {
				errs = append(errs, fmt.Errorf("detach %s link %s: %w", hooks[i].name, s.pin, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return dp.adoptInbound()
}

// pinnedLink is a link loaded from a pin (or attached) and where it is
// pinned; pin is "" once its pin went to another link.
type pinnedLink struct {
	l   link.Link
	pin string
}

// remove unpins the link and closes it: the kernel detaches a cgroup link
// when its last reference goes.
func (p pinnedLink) remove() error {
	var err error
	if p.pin != "" {
		err = removeFile(p.pin)
	}
	return errors.Join(err, p.l.Close())
}

func closePinned(ls []pinnedLink) {
	for _, p := range ls {
		p.l.Close()
	}
}

func closeStale(stale [][]pinnedLink) {
	for _, ls := range stale {
		closePinned(ls)
	}
}

// linkPins are the pins that may hold h's link: its stable name, layout
// 1's name, and the temporary name of a replacement attachHook did not
// finish.
func linkPins(pinDir, hook string) []string {
	dir := filepath.Join(pinDir, linksDir)
	pins := []string{filepath.Join(dir, hook)}
	for old, h := range layout1Links {
		if h == hook {
			pins = append(pins, filepath.Join(dir, old))
		}
	}
	return append(pins, filepath.Join(dir, hook+newPinSuffix))
}

// newPinSuffix names a replacement link's pin before it is renamed over
// the stable one.
const newPinSuffix = "-new" // bpffs refuses names with a dot

// pinnedLinks loads every link pinned for hook.
func pinnedLinks(pinDir, hook string) ([]pinnedLink, error) {
	var out []pinnedLink
	for _, pin := range linkPins(pinDir, hook) {
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			closePinned(out)
			return nil, fmt.Errorf("load pinned %s link %s: %w", hook, pin, err)
		}
		out = append(out, pinnedLink{l, pin})
	}
	return out, nil
}

// attachHook gives hook h the program prog. A link pinned for h on this
// datapath's cgroup (at h's name, or at layout 1's name for it) is updated
// in place and pinned at h's name. Without one, a new link is attached and
// pinned at h's name (replacing the pin of a link pinned for another
// cgroup, which stays attached until the caller closes it). The other links
// pinned for h are returned for the caller to remove once every hook is
// attached.
func (dp *Datapath) attachHook(h hook, name string, prog *ebpf.Program) (link.Link, []pinnedLink, error) {
	if prog == nil {
		return nil, nil, fmt.Errorf("attach %s: program %s missing from the datapath object", h.name, name)
	}
	stable := filepath.Join(dp.cfg.PinDir, linksDir, h.name)
	found, err := pinnedLinks(dp.cfg.PinDir, h.name)
	if err != nil {
		return nil, nil, err
	}
	var (
		adopted *pinnedLink
		stale   []pinnedLink
	)
	for i := range found {
		info, ierr := found[i].l.Info()
		if adopted == nil && ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == dp.cgroupID {
			adopted = &found[i]
			continue
		}
		stale = append(stale, found[i])
	}
	if adopted != nil {
		if err := adopted.l.Update(prog); err != nil {
			closePinned(found)
			return nil, nil, fmt.Errorf("update pinned %s link to %s: %w", h.name, name, err)
		}
		if adopted.pin != stable {
			if err := dp.movePin(adopted.pin, stable, stale); err != nil {
				closePinned(found)
				return nil, nil, fmt.Errorf("pin %s link at %s: %w", h.name, stable, err)
			}
		}
		dp.cfg.Log.WithField("hook", h.name).WithField("program", name).Debug("adopted pinned link")
		return adopted.l, stale, nil
	}
	if len(stale) > 0 {
		dp.cfg.Log.WithField("hook", h.name).Info("attaching a new link beside one pinned for another cgroup (the configuration changed); the old one is removed once every hook is attached")
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: dp.cfg.CgroupPath, Attach: h.attach, Program: prog})
	if err != nil {
		closePinned(stale)
		return nil, nil, fmt.Errorf("attach %s to %s: %w", name, dp.cfg.CgroupPath, err)
	}
	tmp := stable + newPinSuffix
	err = removeFile(tmp) // a link pinned there is in stale
	if err == nil {
		err = l.Pin(tmp)
	}
	if err == nil {
		err = dp.movePin(tmp, stable, stale)
	}
	if err != nil {
		l.Close()
		closePinned(stale)
		return nil, nil, fmt.Errorf("pin %s link: %w", h.name, err)
	}
	return l, stale, nil
}

// movePin renames the pin from to to, replacing what is pinned at to
// (whose link, in stale, then has no pin of its own left to remove).
func (dp *Datapath) movePin(from, to string, stale []pinnedLink) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	for i := range stale {
		if stale[i].pin == to || stale[i].pin == from {
			stale[i].pin = ""
		}
	}
	return nil
}

// spec returns the datapath's spec with the config set and only the
// programs in keep, and the maps they use.
func (dp *Datapath) spec(keep []string) (*ebpf.CollectionSpec, error) {
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	if err := bpfobj.SetVariables(spec, map[string]any{datapathVarSbCfg: dp.config()}); err != nil {
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
	if c.OutboundLoopbackOnly {
		v.OutboundLoopbackOnly = 1
	}
	copy(v.InboundSkipPorts[:], c.InboundSkipPorts)
	if !c.NoDNS {
		v.DnsPort = c.DNSPort
	}
	return v
}

// config is the load-time settings with the legacy fallbacks on when the
// programs read layout 1's maps.
func (dp *Datapath) config() datapathSbConfig {
	v := dp.cfg.config()
	if dp.legacy {
		v.LegacyLayout = 1
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
	sockhash, err := ebpf.LoadPinnedMap(filepath.Join(MapDir(dp.cfg.PinDir), datapathMapSbSockhash), nil)
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
// map of this layout version that does not match this agent's definition.
func describeLoadError(err error, pinDir string) error {
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("load the datapath: a map pinned in %s does not match this agent's pinned layout v%d (a build that changed a map without a new layout version pinned it): run `sockbridge uninstall` first: %w", pinDir, LayoutVersion, err)
	}
	return bpfobj.LoadError("the datapath", err)
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
// removes its maps and the directory, whatever pinned layout they are of
// (layout 1's flat pins, the v<N>/ directories, a switch left halfway). It
// succeeds when nothing is there. Links go first, the hooks that start
// capturing first (connect4 before getsockopt, as hooks orders them
// backwards), then the inbound links, then the maps. It refuses, before
// removing anything, a directory that is not on bpffs, the bpffs mount
// point itself, and one holding anything sockbridge does not pin (see
// ownPins): those pins are another tool's, and removing them would detach
// its programs.
func Uninstall(pinDir string) error {
	if _, err := os.Lstat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	own, err := ownPins(pinDir)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	var errs []error
	for _, pin := range own.links {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", pin, err))
			continue
		}
		// The kernel detaches a cgroup link when its last reference goes.
		if err := errors.Join(removeFile(pin), l.Close()); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
		}
	}
	for _, pin := range own.maps {
		if err := removeFile(pin); err != nil {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", pin, err))
		}
	}
	for _, dir := range own.dirs {
		if err := removeFile(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// pins are sockbridge's pins in a pin directory, paths in removal order.
type pins struct {
	// links: cgroup hooks' links in reverse hooks order (layout 1's by
	// their hook; names this agent does not know first, as a newer
	// layout's hook may start capturing), then inbound links.
	links []string
	maps  []string
	// dirs: deepest first, the pin directory last.
	dirs []string
}

// ownPins checks that dir is a sockbridge pin directory on bpffs, below
// the mount point, holding only sockbridge's pins, and lists them. Its own
// are: links/ with link pins and links/inbound/ with link pins; map pins
// named sb_* at the top (layout 1); and v<N>/ directories holding sb_*
// pins and subdirectories of the same kind (this layout's v2/legacy/, and a
// newer layout's, so that its datapath can be removed before a downgrade).
func ownPins(dir string) (*pins, error) {
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
	own := &pins{}
	var foreign []string
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		switch {
		case e.IsDir() && e.Name() == linksDir:
			if err := own.addLinks(path, &foreign); err != nil {
				return nil, err
			}
		case e.IsDir() && versionDirRE.MatchString(e.Name()):
			if err := own.addMapDir(path, e.Name(), &foreign); err != nil {
				return nil, err
			}
		case !e.IsDir() && strings.HasPrefix(e.Name(), "sb_"):
			own.maps = append(own.maps, path)
		case e.IsDir():
			foreign = append(foreign, e.Name()+"/")
		default:
			foreign = append(foreign, e.Name())
		}
	}
	if len(foreign) > 0 {
		return nil, fmt.Errorf("%s holds %s, which sockbridge does not pin: refusing to remove it", dir, strings.Join(foreign, ", "))
	}
	own.dirs = append(own.dirs, dir)
	return own, nil
}

// addLinks lists links/ and links/inbound/.
func (own *pins) addLinks(path string, foreign *[]string) error {
	sub, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("list %s: %w", path, err)
	}
	var cgroupLinks []string
	for _, l := range sub {
		switch {
		case l.IsDir() && l.Name() == inboundLinksDir:
			in, err := os.ReadDir(filepath.Join(path, inboundLinksDir))
			if err != nil {
				return fmt.Errorf("list %s: %w", filepath.Join(path, inboundLinksDir), err)
			}
			for _, i := range in {
				if i.IsDir() {
					*foreign = append(*foreign, filepath.Join(linksDir, inboundLinksDir, i.Name())+"/")
					continue
				}
				own.links = append(own.links, filepath.Join(path, inboundLinksDir, i.Name()))
			}
			own.dirs = append(own.dirs, filepath.Join(path, inboundLinksDir))
		case l.IsDir():
			*foreign = append(*foreign, filepath.Join(linksDir, l.Name())+"/")
		default:
			cgroupLinks = append(cgroupLinks, l.Name())
		}
	}
	// The hook that starts capturing first.
	rank := func(name string) int {
		name = strings.TrimSuffix(name, newPinSuffix)
		if h, ok := layout1Links[name]; ok {
			name = h
		}
		return -hookIndex(name)
	}
	slices.SortStableFunc(cgroupLinks, func(a, b string) int { return rank(a) - rank(b) })
	for i, name := range cgroupLinks {
		cgroupLinks[i] = filepath.Join(path, name)
	}
	own.links = append(cgroupLinks, own.links...)
	own.dirs = append(own.dirs, path)
	return nil
}

// addMapDir lists a v<N>/ directory and its subdirectories: sb_* pins.
func (own *pins) addMapDir(path, rel string, foreign *[]string) error {
	sub, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("list %s: %w", path, err)
	}
	for _, e := range sub {
		switch {
		case e.IsDir():
			if err := own.addMapDir(filepath.Join(path, e.Name()), filepath.Join(rel, e.Name()), foreign); err != nil {
				return err
			}
		case strings.HasPrefix(e.Name(), "sb_"):
			own.maps = append(own.maps, filepath.Join(path, e.Name()))
		default:
			*foreign = append(*foreign, filepath.Join(rel, e.Name()))
		}
	}
	own.dirs = append(own.dirs, path)
	return nil
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
