"""Run with RAY_AUTH_MODE=disabled (by test_logs.py, in its own process: Ray
caches the authentication mode per process): starts a cluster, starts the
plugin in an actor and prints the actor's pid and its worker log file, where
the plugin's unauthenticated-data-plane warning must be."""

import glob
import os

import ray

ray.init(num_cpus=2, include_dashboard=False)


@ray.remote
class PluginActor:
    def start_plugin(self):
        from ray_rdt import process

        process.get_context()
        return os.getpid()


pid = ray.get(PluginActor.remote().start_plugin.remote())
session = ray._private.worker.global_worker.node.get_session_dir_path()
(log,) = glob.glob(os.path.join(session, "logs", f"worker-*-{pid}.err"))
print(f"PID {pid}")
print(f"LOG {log}")
ray.shutdown()
