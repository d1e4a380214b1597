// parley: a team-chat AI bot daemon. main only hands over to the composition root.

#include "app/allocator.h"
#include "app/commands.h"

int main(int argc, char** argv) {
  parley::app::TuneAllocator();  // before any thread starts
  return parley::app::Main(argc, argv);
}
