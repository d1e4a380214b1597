// parley: a team-chat AI bot daemon. main only hands over to the composition root.

#include "app/commands.h"

int main(int argc, char** argv) { return parley::app::Main(argc, argv); }
