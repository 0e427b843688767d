package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"

	"github.com/sockbridge/sockbridge/pkg/sockdiag"
)

// LayoutVersion is the version of the pinned layout this agent writes: where
// its maps and links are pinned and what every pinned map holds. It is the
// one place the version lives (docs/datapath.md, "Pinned layout").
//
//   - Layout 1, the released agent up to commit 9048814: IPv4-only maps
//     pinned flat in the pin directory (<dir>/sb_socks ...), links pinned
//     under program names (<dir>/links/connect4_redirect ...).
//   - Layout 2: maps in <dir>/v2/, links at stable hook names
//     (<dir>/links/<hook>, <dir>/links/inbound/<pod cgroup id>) that every
//     later layout keeps and updates in place; layout 1's in-flight state
//     in <dir>/v2/legacy/ while sockets it captured live on.
//
// An agent adopts a layout of its own version as it is (a restart),
// migrates from layout 1 without uninstalling it (Load, Switch), and
// refuses a newer layout before touching anything. Changing a pinned map's
// definition (key, value, size, flags) or meaning takes a new version, and
// with it a migration from this one.
const LayoutVersion = 2

// legacyDir is the subdirectory of the version directory holding the
// earlier layout's maps that connections it captured may still need.
const legacyDir = "legacy"

// MapDir is the directory of pinDir where this layout's maps are pinned.
func MapDir(pinDir string) string {
	return filepath.Join(pinDir, versionDir(LayoutVersion))
}

func versionDir(v int) string { return "v" + strconv.Itoa(v) }

var versionDirRE = regexp.MustCompile(`^v([0-9]+)$`)

func legacyPinDir(pinDir string) string { return filepath.Join(MapDir(pinDir), legacyDir) }

// layout1Links maps each link pin of layout 1, named after its program, to
// the hook it is attached to.
var layout1Links = map[string]string{
	"sockops_track":        "sockops",
	"getsockopt_origdst":   "getsockopt",
	"getpeername4_restore": "getpeername4",
	"connect4_redirect":    "connect4",
}

// layout1Maps are the maps layout 1 pinned flat in the pin directory.
var layout1Maps = []string{
	"sb_pods", "sb_pod_ips", "sb_socks", "sb_tuples", "sb_cg_cache", "sb_generation",
	"sb_ports", "sb_cidr_excl", "sb_cidr_incl", "sb_sockhash", "sb_stats",
}

// layout1Legacy maps each layout 1 map that connections it captured may
// still need to the map of this object that reads it (bpf/legacy.c);
// sb_sockhash is read by layout 1's own sk_msg program, attached to it, so
// it is only kept pinned.
var layout1Legacy = map[string]string{
	"sb_socks":    datapathMapSbSocksV1,
	"sb_tuples":   datapathMapSbTuplesV1,
	"sb_sockhash": "",
}

// layout1Counters is how many counters layout 1's sb_stats had; their
// indexes name the same counters in this layout's enum sb_stat
// (SB_STAT_CAPTURED ... SB_STAT_CGROUP_WALKS).
const layout1Counters = 13

// pinnedLayout is what an agent finds in its pin directory.
type pinnedLayout struct {
	// versions are the v<N> directories.
	versions []int
	// flatMaps are layout 1's maps pinned at the top.
	flatMaps []string
	// layout1Links are link pins named after layout 1's programs.
	layout1Links []string
}

// layout1 reports whether anything of layout 1 is left: its datapath is
// (still) attached and this agent's switch has not finished.
func (p *pinnedLayout) layout1() bool {
	return len(p.flatMaps) > 0 || len(p.layout1Links) > 0
}

// CheckLayout refuses, without changing anything, a pin directory this
// agent cannot take over: a pinned layout newer than LayoutVersion (a
// downgrade), one no released agent wrote, or maps pinned flat that are not
// layout 1's. Each refusal is one line that names the layouts and says to
// run `sockbridge uninstall` first. Load checks the same; the agent asks
// before it probes the kernel.
func CheckLayout(pinDir string) error {
	spec, err := loadDatapath()
	if err != nil {
		return fmt.Errorf("load datapath spec: %w", err)
	}
	_, err = inspectLayout(pinDir, spec)
	return err
}

// inspectLayout reads pinDir without changing anything, and refuses a
// layout this agent cannot take over: a newer version (a downgrade) or maps
// pinned flat that are not layout 1's (an unreleased build's). Nothing is
// pinned yet when pinDir does not exist.
func inspectLayout(pinDir string, spec *ebpf.CollectionSpec) (*pinnedLayout, error) {
	entries, err := os.ReadDir(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return &pinnedLayout{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pin directory: %w", err)
	}
	p := &pinnedLayout{}
	var unknown []string
	for _, e := range entries {
		if m := versionDirRE.FindStringSubmatch(e.Name()); m != nil && e.IsDir() {
			v, err := strconv.Atoi(m[1])
			if err != nil {
				return nil, fmt.Errorf("pin directory %s: version directory %s: %w", pinDir, e.Name(), err)
			}
			p.versions = append(p.versions, v)
			continue
		}
		if !e.IsDir() && strings.HasPrefix(e.Name(), "sb_") {
			if !slices.Contains(layout1Maps, e.Name()) {
				unknown = append(unknown, e.Name())
			}
			p.flatMaps = append(p.flatMaps, e.Name())
		}
	}
	slices.Sort(p.versions)
	if n := len(p.versions); n > 0 && p.versions[n-1] > LayoutVersion {
		v := p.versions[n-1]
		return nil, fmt.Errorf("%s holds pinned layout v%d, newer than this agent's v%d: downgrades are refused; run `sockbridge uninstall --bpffs-dir %s` first (nothing is captured until an agent installs again), or run an agent of layout v%d or later",
			pinDir, v, LayoutVersion, pinDir, v)
	}
	for _, v := range p.versions {
		if v != LayoutVersion {
			return nil, fmt.Errorf("%s holds pinned layout v%d, which no released sockbridge wrote and this agent (layout v%d) cannot take over: run `sockbridge uninstall --bpffs-dir %s` first", pinDir, v, LayoutVersion, pinDir)
		}
	}
	// Layout 1's in-flight state must be readable by bpf/legacy.c's maps.
	for old, ours := range layout1Legacy {
		if ours == "" || !slices.Contains(p.flatMaps, old) {
			continue
		}
		ms, ok := spec.Maps[ours]
		if !ok {
			return nil, fmt.Errorf("the datapath object has no map %s", ours)
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, old), nil)
		if err != nil {
			return nil, fmt.Errorf("open pinned %s: %w", old, err)
		}
		err = ms.Compatible(m)
		m.Close()
		if err != nil {
			unknown = append(unknown, old)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, fmt.Errorf("%s holds maps pinned flat that are not layout 1's (%s): an unreleased sockbridge build's datapath, which this agent (layout v%d) cannot take over; run `sockbridge uninstall --bpffs-dir %s` first",
			pinDir, strings.Join(slices.Compact(unknown), ", "), LayoutVersion, pinDir)
	}
	links, err := os.ReadDir(filepath.Join(pinDir, linksDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(pinDir, linksDir), err)
	}
	for _, e := range links {
		if _, ok := layout1Links[e.Name()]; ok && !e.IsDir() {
			p.layout1Links = append(p.layout1Links, e.Name())
		}
	}
	return p, nil
}

// openLegacy returns the earlier layout's maps this agent's programs read
// (bpf/legacy.c), by the name of the map of this object they replace, and
// keeps them pinned in v<N>/legacy/. While layout 1 is still attached they
// are its pinned maps, pinned there a second time; after the switch they
// are taken from legacy/ until DropLegacy finds no socket needs them, and
// then dropped here too. Empty when there is no earlier layout.
func openLegacy(pinDir string, p *pinnedLayout, log logrus.FieldLogger) (map[string]*ebpf.Map, error) {
	dir := legacyPinDir(pinDir)
	if !p.layout1() {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		dropped, err := dropLegacyIfUnused(pinDir)
		switch {
		case err != nil:
			log.WithError(err).Warn("cannot tell whether connections captured by pinned layout 1 are still open; its maps stay in use")
		case dropped:
			log.Info("no connection captured by pinned layout 1 is left: its maps are unpinned")
			return nil, nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	maps := map[string]*ebpf.Map{}
	for old, ours := range layout1Legacy {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, old), nil)
		if errors.Is(err, os.ErrNotExist) && slices.Contains(p.flatMaps, old) {
			m, err = pinAgain(filepath.Join(pinDir, old), filepath.Join(dir, old))
		}
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			closeMaps(maps)
			return nil, fmt.Errorf("keep layout 1's %s: %w", old, err)
		}
		if ours == "" {
			m.Close() // kept by its pin alone
			continue
		}
		maps[ours] = m
	}
	return maps, nil
}

// pinAgain pins the map pinned at from at to as well, and returns it.
func pinAgain(from, to string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(from, nil)
	if err != nil {
		return nil, err
	}
	// A clone has no pin path, so Pin adds a pin instead of moving one.
	c, err := m.Clone()
	m.Close()
	if err != nil {
		return nil, err
	}
	if err := c.Pin(to); err != nil {
		c.Close()
		return nil, fmt.Errorf("pin at %s: %w", to, err)
	}
	return c, nil
}

func closeMaps(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

// dropLegacyIfUnused removes v<N>/legacy/ when no connection can need the
// maps in it any more: no socket in any network namespace carries storage
// in layout 1's sb_socks (the sockets layout 1 captured or accepted have
// all closed; its sb_tuples entries can only be consumed for such a
// socket), and layout 1's sockhash holds no socket (removing it would drop
// the bytes queued on a spliced one). Programs loaded with these maps keep
// them until they are replaced.
func dropLegacyIfUnused(pinDir string) (bool, error) {
	dir := legacyPinDir(pinDir)
	socks, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sb_socks"), nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return false, fmt.Errorf("open layout 1's sb_socks: %w", err)
	default:
		found, err := sockdiag.DumpAll([]int{socks.FD()}, sockdiag.Options{})
		socks.Close()
		if err != nil {
			return false, fmt.Errorf("look for sockets layout 1 captured: %w", err)
		}
		if len(found) > 0 {
			return false, nil
		}
	}
	sockhash, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sb_sockhash"), nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return false, fmt.Errorf("open layout 1's sb_sockhash: %w", err)
	default:
		n, err := countKeys(sockhash)
		sockhash.Close()
		if err != nil {
			return false, fmt.Errorf("count layout 1's spliced sockets: %w", err)
		}
		if n > 0 {
			return false, nil
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "sb_") && !e.IsDir() {
			errs = append(errs, removeFile(filepath.Join(dir, e.Name())))
		}
	}
	errs = append(errs, removeFile(dir))
	if err := errors.Join(errs...); err != nil {
		return false, fmt.Errorf("drop layout 1's maps: %w", err)
	}
	return true, nil
}

// finishLayout1 ends the switch from layout 1, once every hook runs this
// agent's programs: layout 1's counters are added to this layout's, and its
// flat map pins are removed (the maps its in-flight connections need stay
// pinned in v<N>/legacy/).
func (dp *Datapath) finishLayout1() error {
	var errs []error
	if err := dp.addLayout1Counters(); err != nil {
		errs = append(errs, err)
	}
	for _, name := range layout1Maps {
		errs = append(errs, removeFile(filepath.Join(dp.cfg.PinDir, name)))
	}
	return errors.Join(errs...)
}

// addLayout1Counters adds the counters layout 1 kept in its pinned
// sb_stats to this layout's, CPU by CPU, so that they count across the
// upgrade as across a restart. What layout 1's programs count after the
// read (none run any more but the sk_msg program of sockets it spliced) is
// not carried over.
func (dp *Datapath) addLayout1Counters() error {
	old, err := ebpf.LoadPinnedMap(filepath.Join(dp.cfg.PinDir, "sb_stats"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open layout 1's sb_stats: %w", err)
	}
	defer old.Close()
	n := min(uint32(layout1Counters), old.MaxEntries())
	for i := uint32(0); i < n; i++ {
		var was, now []uint64
		if err := old.Lookup(i, &was); err != nil {
			return fmt.Errorf("read layout 1's counter %d: %w", i, err)
		}
		if err := dp.maps.SbStats.Lookup(i, &now); err != nil {
			return fmt.Errorf("read counter %d: %w", i, err)
		}
		for cpu := range min(len(was), len(now)) {
			now[cpu] += was[cpu]
		}
		if err := dp.maps.SbStats.Update(i, now, ebpf.UpdateExist); err != nil {
			return fmt.Errorf("carry layout 1's counter %d over: %w", i, err)
		}
	}
	return nil
}

// removeFile removes a pin or an empty directory; one already gone is not
// an error.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
