"""`finmesh load`: a load harness for the mesh — open- and closed-loop engines, scenarios that move money only
between dedicated test accounts, HDR latency figures, JSON results and a self-contained HTML report."""
