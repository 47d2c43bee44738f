"""The one loop every run uses: a run's workdir files and resume
(scaffold), the loop with its cadence and signals (loop), Orbax checkpoints,
the metric writer and throughput. It knows no run kind: a kind builds a
`scaffold.Job` and hands it to `scaffold.Run`."""
