"""The finmesh operator CLI: run the mesh locally, render traces, run the demo slice, check health."""
