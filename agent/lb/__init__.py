"""The service load balancer's control plane (kube-proxy replacement).

    services.py    Services, EndpointSlices and pods -> the LB maps (ServicePlanner, ClusterIPs,
                   LB IPAM, NodePorts, ids)
    maglev.py      Cilium's Maglev lookup tables
    l2announce.py  L2 announcements: which node answers ARP for which service address
"""
