mod sim_protocol;
