// Package agent runs the node agent: it installs (or adopts) the datapath,
// keeps the pod map in step with its pod source, and leaves the datapath
// in place when it stops so that traffic keeps flowing across restarts.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/podfile"
)

// Config is the agent's configuration.
type Config struct {
	Datapath datapath.Config
	// CgroupRoot is the cgroup v2 mount pod cgroup paths are relative to.
	CgroupRoot string
	// PodFile is a static pod list (podfile format); SIGHUP rereads it.
	PodFile string
	// UninstallOnExit removes the datapath when the agent stops.
	UninstallOnExit bool
	Log             *logrus.Logger
}

// Run installs the datapath and serves until ctx ends.
func Run(ctx context.Context, cfg Config) (err error) {
	log := cfg.Log
	cfg.Datapath.Log = log
	dp, err := datapath.Load(cfg.Datapath)
	if err != nil {
		return err
	}
	defer func() {
		err = errors.Join(err, dp.Close())
		if cfg.UninstallOnExit {
			err = errors.Join(err, datapath.Uninstall(cfg.Datapath.PinDir))
			log.Info("datapath uninstalled")
		}
	}()
	log.WithFields(logrus.Fields{
		"cgroup": cfg.Datapath.CgroupPath, "pins": cfg.Datapath.PinDir,
		"outbound_port": cfg.Datapath.OutboundPort, "inbound_port": cfg.Datapath.InboundPort,
		"proxy_uid": cfg.Datapath.ProxyUID,
	}).Info("datapath ready")

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if cfg.PodFile != "" {
		syncPodFile(log, dp, cfg)
	}
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping; the datapath stays attached")
			return nil
		case <-hup:
			if cfg.PodFile != "" {
				syncPodFile(log, dp, cfg)
			}
		}
	}
}

// syncPodFile makes the pod map equal the file. Errors are logged, never
// fatal: a bad entry must not take the other pods' capture down.
func syncPodFile(log *logrus.Logger, dp *datapath.Datapath, cfg Config) {
	f, err := podfile.Read(cfg.PodFile)
	if err != nil {
		log.WithError(err).Error("pod file unreadable; keeping the current pods")
		return
	}
	pods, rerr := f.Resolve(cfg.CgroupRoot)
	if rerr != nil {
		log.WithError(rerr).Error("pod file has bad entries; they are left out")
	}
	if err := dp.SyncPods(pods); err != nil {
		log.WithError(err).Error("update pod map")
	}
	log.WithField("pods", len(pods)).Info(fmt.Sprintf("pods synced from %s", cfg.PodFile))
}
