"""datapath: the library half of the project. BPF build and load (build), attach (attach), map
codecs (abi, maps), the BPF_PROG_TEST_RUN harness (testrun) and netns helpers (netns).
The agent package drives it; nothing here knows about Kubernetes objects."""
