"""Issue 17: the security probe's findings, each reproduced over the real interfaces."""
