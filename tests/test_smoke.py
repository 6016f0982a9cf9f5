import pandas as pd

import celerynb


def test_dataframe_roundtrip(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"a": range(100), "b": [float(i) / 3 for i in range(100)]})
    out = celerynb.cmap(lambda d: d.assign(c=d.a * 2), df, cluster=cluster, progress=False)
    pd.testing.assert_frame_equal(out, df.assign(c=df.a * 2))


def test_remote_worker(remote: celerynb.Cluster) -> None:
    out = celerynb.cmap(
        lambda xs: [x + 1 for x in xs], list(range(50)), cluster=remote, progress=False
    )
    assert out == list(range(1, 51))
